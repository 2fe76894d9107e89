//! ONNX's own per-operator test data (Debian's `libonnx-testdata`, which `.ci/run` installs):
//! every node test of a supported operator either runs and matches ONNX's expected outputs, or is
//! refused with an error (an attribute or type drmguard-onnx does not run). A wrong number or a
//! panic fails the test, and the tests listed in `MUST_PASS` must run and match.
//!
//! `DRMGUARD_ONNX_TESTDATA` overrides the folder. Without the data the test fails, unless
//! `DRMGUARD_SKIP_ONNX_TESTDATA` is set (`.ci/run` sets it, with a note, only when the package
//! cannot be installed).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use drmguard_onnx::{OnnxModel, Value, tensor};

const DEFAULT_DATA: &str = "/usr/share/libonnx-testdata/data/node";

/// Test-name prefixes of the supported operators.
const OPERATORS: &[&str] = &[
    "test_conv_", "test_batchnorm_", "test_relu", "test_leakyrelu", "test_prelu", "test_sigmoid", "test_tanh",
    "test_maxpool_2d", "test_averagepool_2d", "test_globalaveragepool", "test_gemm", "test_matmul_", "test_add",
    "test_mul", "test_sub", "test_div", "test_flatten", "test_reshape", "test_concat", "test_transpose",
    "test_constant_pad", "test_edge_pad", "test_reflect_pad", "test_clip", "test_softmax", "test_reduce_mean",
    "test_identity", "test_resize_", "test_shape", "test_gather_", "test_unsqueeze",
];

/// Node tests that must run and match: every one that did with libonnx-testdata 1.12 (Debian
/// 1.12.0-2), so that a regression shows.
const MUST_PASS: &[&str] = &[
    "test_add", "test_add_bcast", "test_averagepool_2d_default", "test_averagepool_2d_pads",
    "test_averagepool_2d_pads_count_include_pad", "test_averagepool_2d_precomputed_pads",
    "test_averagepool_2d_precomputed_pads_count_include_pad", "test_averagepool_2d_precomputed_same_upper",
    "test_averagepool_2d_precomputed_strides", "test_averagepool_2d_same_lower", "test_averagepool_2d_same_upper",
    "test_averagepool_2d_strides", "test_batchnorm_epsilon", "test_batchnorm_example", "test_clip_default_inbounds",
    "test_concat_1d_axis_0", "test_concat_1d_axis_negative_1", "test_concat_2d_axis_0", "test_concat_2d_axis_1",
    "test_concat_2d_axis_negative_1", "test_concat_2d_axis_negative_2", "test_concat_3d_axis_0",
    "test_concat_3d_axis_1", "test_concat_3d_axis_2", "test_concat_3d_axis_negative_1",
    "test_concat_3d_axis_negative_2", "test_concat_3d_axis_negative_3", "test_conv_with_autopad_same",
    "test_conv_with_strides_and_asymmetric_padding", "test_conv_with_strides_no_padding",
    "test_conv_with_strides_padding", "test_div", "test_div_bcast", "test_div_example", "test_flatten_axis0",
    "test_flatten_axis1", "test_flatten_axis2", "test_flatten_axis3", "test_flatten_default_axis",
    "test_flatten_negative_axis1", "test_flatten_negative_axis2", "test_flatten_negative_axis3",
    "test_flatten_negative_axis4", "test_gemm_all_attributes", "test_gemm_alpha", "test_gemm_beta",
    "test_gemm_default_matrix_bias", "test_gemm_default_no_bias", "test_gemm_default_single_elem_vector_bias",
    "test_gemm_default_vector_bias", "test_gemm_default_zero_bias", "test_gemm_transposeA", "test_gemm_transposeB",
    "test_globalaveragepool", "test_globalaveragepool_precomputed", "test_identity", "test_leakyrelu",
    "test_leakyrelu_default", "test_leakyrelu_example", "test_matmul_2d", "test_matmul_3d", "test_matmul_4d",
    "test_maxpool_2d_ceil", "test_maxpool_2d_default", "test_maxpool_2d_dilations", "test_maxpool_2d_pads",
    "test_maxpool_2d_precomputed_pads", "test_maxpool_2d_precomputed_same_upper",
    "test_maxpool_2d_precomputed_strides", "test_maxpool_2d_same_lower", "test_maxpool_2d_same_upper",
    "test_maxpool_2d_strides", "test_mul", "test_mul_bcast", "test_mul_example", "test_prelu_broadcast",
    "test_prelu_example", "test_reduce_mean_default_axes_keepdims_example",
    "test_reduce_mean_default_axes_keepdims_random", "test_reduce_mean_do_not_keepdims_example",
    "test_reduce_mean_do_not_keepdims_random", "test_reduce_mean_keepdims_example",
    "test_reduce_mean_keepdims_random", "test_reduce_mean_negative_axes_keepdims_example",
    "test_reduce_mean_negative_axes_keepdims_random", "test_relu", "test_reshape_extended_dims",
    "test_reshape_negative_dim", "test_reshape_negative_extended_dims", "test_reshape_one_dim",
    "test_reshape_reduced_dims", "test_reshape_reordered_all_dims", "test_reshape_reordered_last_dims",
    "test_reshape_zero_and_negative_dim", "test_reshape_zero_dim", "test_resize_downsample_scales_linear",
    "test_resize_downsample_scales_linear_align_corners", "test_resize_downsample_scales_nearest",
    "test_resize_downsample_sizes_linear_pytorch_half_pixel", "test_resize_downsample_sizes_nearest",
    "test_resize_upsample_scales_linear", "test_resize_upsample_scales_linear_align_corners",
    "test_resize_upsample_scales_nearest", "test_resize_upsample_sizes_nearest",
    "test_resize_upsample_sizes_nearest_ceil_half_pixel", "test_resize_upsample_sizes_nearest_floor_align_corners",
    "test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric", "test_sigmoid", "test_sigmoid_example",
    "test_softmax_axis_0", "test_softmax_axis_1", "test_softmax_axis_2", "test_softmax_default_axis",
    "test_softmax_example", "test_softmax_large_number", "test_softmax_negative_axis", "test_sub", "test_sub_bcast",
    "test_sub_example", "test_tanh", "test_tanh_example", "test_transpose_all_permutations_0",
    "test_transpose_all_permutations_1", "test_transpose_all_permutations_2", "test_transpose_all_permutations_3",
    "test_transpose_all_permutations_4", "test_transpose_all_permutations_5", "test_transpose_default",
    "test_shape", "test_shape_clip_end", "test_shape_clip_start", "test_shape_end_1", "test_shape_end_negative_1",
    "test_shape_example", "test_shape_start_1", "test_shape_start_1_end_2", "test_shape_start_1_end_negative_1",
    "test_shape_start_negative_1", "test_unsqueeze_axis_0", "test_unsqueeze_axis_1", "test_unsqueeze_axis_2",
    "test_unsqueeze_axis_3",
];

/// A TensorProto (`input_0.pb`): float data as a tensor, integer data as a list.
fn read_tensor_proto(bytes: &[u8], device: &Device) -> Result<Value, String> {
    fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at).ok_or("truncated varint")?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let (mut dims, mut dtype, mut floats, mut ints, mut raw) = (Vec::new(), 0u64, Vec::new(), Vec::new(), None);
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let (field, wire) = (key >> 3, key & 7);
        let payload: &[u8] = match wire {
            0 => {
                let v = varint(bytes, &mut at)?;
                match field {
                    1 => dims.push(v as i64),
                    2 => dtype = v,
                    5 | 7 => ints.push(v as i64),
                    _ => {}
                }
                continue;
            }
            2 => {
                let len = varint(bytes, &mut at)? as usize;
                let slice = bytes.get(at..at + len).ok_or("truncated field")?;
                at += len;
                slice
            }
            5 => {
                let slice = bytes.get(at..at + 4).ok_or("truncated fixed32")?;
                at += 4;
                if field == 4 {
                    floats.push(f32::from_le_bytes(slice.try_into().unwrap()));
                }
                continue;
            }
            1 => {
                at += 8;
                continue;
            }
            other => return Err(format!("wire type {other}")),
        };
        match field {
            1 | 5 | 7 => {
                let mut p = 0;
                while p < payload.len() {
                    let v = varint(payload, &mut p)? as i64;
                    if field == 1 { dims.push(v) } else { ints.push(v) }
                }
            }
            4 => floats.extend(payload.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
            9 => raw = Some(payload.to_vec()),
            _ => {}
        }
    }
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    match dtype {
        1 => {
            let values = match raw {
                Some(r) => r.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                None => floats,
            };
            tensor(values, &shape, device).map_err(|e| e.to_string())
        }
        6 | 7 => {
            let values = match raw {
                Some(r) if dtype == 7 => r.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                Some(r) => r.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
                None => ints,
            };
            Ok(Value::Ints(values))
        }
        other => Err(format!("data type {other}")),
    }
}

fn values(v: Value) -> Result<(Vec<usize>, Vec<f32>), String> {
    if let Value::Ints(ints) = v {
        return Ok((vec![ints.len()], ints.into_iter().map(|i| i as f32).collect()));
    }
    let dims = v.dims();
    let t = v.f1("output").map_err(|e| e.to_string())?;
    Ok((dims, t.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?))
}

enum Outcome {
    Passed,
    Refused(String),
    Wrong(String),
}

fn run_case(dir: &Path, device: &Device) -> Outcome {
    let model = match OnnxModel::load_any(&dir.join("model.onnx"), device) {
        Ok(m) => m,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let mut sets: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    sets.sort();
    for set in sets {
        let read_all = |prefix: &str| -> Result<Vec<Value>, String> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&set)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                .collect();
            files.sort();
            files.iter().map(|f| read_tensor_proto(&std::fs::read(f).unwrap(), device)).collect()
        };
        let (inputs, expected) = match (read_all("input_"), read_all("output_")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => return Outcome::Refused(format!("test data: {e}")),
        };
        let outputs = match model.run_inputs(inputs) {
            Ok(o) => o,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        for (ours, theirs) in outputs.into_iter().zip(expected) {
            let ((d1, a), (d2, b)) = match (values(ours), values(theirs)) {
                (Ok(x), Ok(y)) => (x, y),
                (Err(e), _) | (_, Err(e)) => return Outcome::Refused(e),
            };
            let same_shape = d1 == d2 || (d2.is_empty() && a.len() == 1);
            if !same_shape || a.len() != b.len() {
                return Outcome::Wrong(format!("shape {d1:?}, expected {d2:?}"));
            }
            if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| (*x - *y).abs() > 1e-5 + 1e-4 * y.abs()) {
                return Outcome::Wrong(format!("{x} where ONNX has {y}"));
            }
        }
    }
    Outcome::Passed
}

#[test]
fn onnx_node_tests_of_the_supported_operators() {
    let data = std::env::var("DRMGUARD_ONNX_TESTDATA").unwrap_or_else(|_| DEFAULT_DATA.into());
    let data = Path::new(&data);
    if !data.is_dir() {
        assert!(
            std::env::var_os("DRMGUARD_SKIP_ONNX_TESTDATA").is_some(),
            "ONNX test data missing at {} (apt-get install libonnx-testdata, or set DRMGUARD_ONNX_TESTDATA; DRMGUARD_SKIP_ONNX_TESTDATA=1 skips)",
            data.display()
        );
        eprintln!("skipped: no ONNX test data at {}", data.display());
        return;
    }
    let device = Device::flex();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| OPERATORS.iter().any(|op| p.file_name().unwrap().to_string_lossy().starts_with(op)))
        .collect();
    cases.sort();
    let (mut passed, mut refused, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        match std::panic::catch_unwind(|| run_case(case, &device)) {
            Ok(Outcome::Passed) => passed.push(name),
            Ok(Outcome::Refused(why)) => refused.push(format!("{name}: {why}")),
            Ok(Outcome::Wrong(why)) => wrong.push(format!("{name}: {why}")),
            Err(_) => wrong.push(format!("{name}: panicked")),
        }
    }
    eprintln!("{} node tests: {} passed, {} refused, {} wrong", cases.len(), passed.len(), refused.len(), wrong.len());
    for r in &refused {
        eprintln!("  refused {r}");
    }
    assert!(wrong.is_empty(), "wrong results:\n{}", wrong.join("\n"));
    let missing: Vec<&&str> = MUST_PASS.iter().filter(|t| !passed.iter().any(|p| p == *t)).collect();
    assert!(missing.is_empty(), "must pass but did not: {missing:?}");
}
