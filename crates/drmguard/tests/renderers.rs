//! The synthetic renderers: deterministic per (seed, index), and their labels match the geometry.

use drmguard::data::gaze::GazeScene;
use drmguard::data::headpose::{HeadScene, Part};
use drmguard::data::raster::sample_rng;
use drmguard::data::{Split, gaze, headpose, synthesize, synthesize_split};
use drmguard::task::Task;

#[test]
fn samples_are_deterministic_per_seed_and_index() {
    for task in Task::ALL {
        let render = |seed, i| match task {
            Task::Gaze => gaze::sample(seed, i, 32),
            Task::HeadPose => headpose::sample(seed, i, 32),
            Task::Landmarks => headpose::landmark_sample(seed, i, 32),
            Task::Classification { .. } => unreachable!("Task::ALL holds the rendered regression tasks"),
        };
        let (a, la) = render(7, 3);
        let (b, lb) = render(7, 3);
        assert_eq!(a.as_raw(), b.as_raw(), "{task}: same seed and index must give the same image");
        assert_eq!(la, lb);
        let (c, lc) = render(7, 4);
        assert_ne!(a.as_raw(), c.as_raw(), "{task}: another index must give another image");
        assert_ne!(la, lc);
        let (d, _) = render(8, 3);
        assert_ne!(a.as_raw(), d.as_raw(), "{task}: another seed must give another image");
    }
}

#[test]
fn a_split_drawn_alone_equals_the_split_of_the_whole() {
    let whole = synthesize(Task::HeadPose, 60, 16, 1).unwrap();
    let test_only = synthesize_split(Task::HeadPose, 60, 16, 1, Split::Test).unwrap();
    let from_whole = whole.split(Split::Test);
    assert!(!test_only.is_empty());
    assert_eq!(test_only.names, from_whole.names);
    assert_eq!(test_only.labels, from_whole.labels);
    for (a, b) in test_only.images.iter().zip(&from_whole.images) {
        assert_eq!(a.as_raw(), b.as_raw());
    }
    let sizes: usize = [Split::Train, Split::Val, Split::Test].iter().map(|&s| whole.split(s).len()).sum();
    assert_eq!(sizes, whole.len(), "train, val and test partition the data");
}

#[test]
fn labels_stay_in_their_documented_ranges() {
    for task in [Task::Gaze, Task::HeadPose] {
        let ds = synthesize(task, 200, 16, 3).unwrap();
        for i in 0..ds.len() {
            for (v, half) in ds.label(i).iter().zip(task.label_half_range()) {
                assert!(v.abs() <= *half + 1e-6, "{task}: label {v} outside ±{half}");
            }
        }
    }
}

fn gaze_scene(pitch: f32, yaw: f32) -> GazeScene {
    let mut scene = GazeScene::random(&mut sample_rng(11, 1, 0));
    scene.pitch = pitch;
    scene.yaw = yaw;
    scene.roll = 0.0;
    scene
}

/// Centroid of the darkest pixels inside a window around eye `side`.
fn pupil_centroid(scene: &GazeScene, side: f32, size: u32) -> (f32, f32) {
    let img = scene.render(size, &mut sample_rng(0, 0, 0));
    let e = scene.eye_centre(side);
    let r = scene.eyeball_radius * size as f32;
    let (cx, cy) = (e[0] * size as f32, e[1] * size as f32);
    let mut pts = vec![];
    for y in (cy - r) as u32..(cy + r) as u32 {
        for x in (cx - r) as u32..(cx + r) as u32 {
            let p = img.get_pixel(x, y).0;
            let lum = p.iter().map(|&v| v as u32).sum::<u32>();
            pts.push((lum, x as f32 + 0.5, y as f32 + 0.5));
        }
    }
    pts.sort_by_key(|p| p.0);
    let k = 12;
    let (sx, sy) = pts[..k].iter().fold((0.0, 0.0), |a, p| (a.0 + p.1, a.1 + p.2));
    (sx / k as f32 / size as f32, sy / k as f32 / size as f32)
}

#[test]
fn gaze_moves_both_pupils_where_the_label_points() {
    let size = 128;
    for side in [-1.0, 1.0] {
        let right = pupil_centroid(&gaze_scene(0.0, 0.4), side, size);
        let left = pupil_centroid(&gaze_scene(0.0, -0.4), side, size);
        assert!(right.0 > left.0 + 0.02, "eye {side}: yaw > 0 must move the pupil right: {right:?} vs {left:?}");
        let up = pupil_centroid(&gaze_scene(0.3, 0.0), side, size);
        let down = pupil_centroid(&gaze_scene(-0.3, 0.0), side, size);
        assert!(up.1 < down.1 - 0.01, "eye {side}: pitch > 0 must move the pupil up: {up:?} vs {down:?}");
    }
}

#[test]
fn the_pupil_is_drawn_at_the_eyeball_models_prediction() {
    let scene = gaze_scene(0.1, 0.3);
    for side in [-1.0, 1.0] {
        let p = scene.pupil_centre(side);
        let c = scene.shade(p[0], p[1]);
        assert!(c.iter().all(|&v| v < 0.1), "pupil centre should be black, got {c:?}");
    }
}

fn head(yaw_deg: f32, pitch_deg: f32, roll_deg: f32) -> HeadScene {
    let mut rng = sample_rng(5, 2, 0);
    let base = HeadScene::random(&mut rng);
    let rad = std::f32::consts::PI / 180.0;
    base.with_pose(yaw_deg * rad, pitch_deg * rad, roll_deg * rad)
}

#[test]
fn head_yaw_and_pitch_move_the_nose_the_labelled_way() {
    let centre = |s: &HeadScene| s.project([0.0, 0.0, 0.0]);
    let nose = |s: &HeadScene| s.project(s.nose_tip());
    let right = head(40.0, 0.0, 0.0);
    assert!(nose(&right)[0] > centre(&right)[0] + 0.03, "yaw > 0 turns the nose right");
    let left = head(-40.0, 0.0, 0.0);
    assert!(nose(&left)[0] < centre(&left)[0] - 0.03);
    let up = head(0.0, 30.0, 0.0);
    let down = head(0.0, -30.0, 0.0);
    assert!(nose(&up)[1] < nose(&down)[1] - 0.03, "pitch > 0 lifts the nose");
    let tilted = head(0.0, 0.0, 25.0);
    let top = tilted.project([0.0, -0.9, 0.0]);
    assert!(top[0] > centre(&tilted)[0] + 0.03, "roll > 0 tilts the top of the head right");
}

#[test]
fn the_rendered_nose_is_where_the_pose_puts_it() {
    for (yaw, pitch, roll) in [(0.0, 0.0, 0.0), (45.0, 10.0, -10.0), (-50.0, -20.0, 20.0)] {
        let scene = head(yaw, pitch, roll);
        let tip = scene.project(scene.nose_tip());
        // Just inside the tip, towards the head centre, the ray must hit the nose.
        let c = scene.project([0.0, 0.12, 0.0]);
        let probe = [tip[0] + 0.1 * (c[0] - tip[0]), tip[1] + 0.1 * (c[1] - tip[1])];
        let hit = scene.trace(probe[0], probe[1]).map(|h| h.0);
        assert_eq!(hit, Some(Part::Nose), "pose ({yaw}, {pitch}, {roll})");
    }
}

#[test]
fn landmarks_lie_inside_the_crop_in_the_faces_order() {
    let ds = synthesize(Task::Landmarks, 300, 16, 4).unwrap();
    let mut sums = [0.0f64; 10];
    for i in 0..ds.len() {
        let l = ds.label(i);
        assert!(l.iter().all(|v| (0.05..=0.95).contains(v)), "sample {i}: {l:?} leaves the crop");
        // Left eye left of the right eye and above the mouth; left mouth corner left of the right.
        assert!(l[0] < l[2] && l[6] < l[8], "sample {i}: {l:?}");
        assert!(l[1] < l[7] && l[3] < l[9], "sample {i}: the eyes must be above the mouth: {l:?}");
        for (s, v) in sums.iter_mut().zip(l) {
            *s += *v as f64;
        }
    }
    // Framed as MTCNN frames faces: eyes ~0.38 of the side apart, the points centred near
    // (0.5, 0.54).
    let mean: Vec<f64> = sums.iter().map(|s| s / ds.len() as f64).collect();
    let eye_gap = mean[2] - mean[0];
    assert!((0.3..0.45).contains(&eye_gap), "mean eye distance {eye_gap}");
    let cx = (0..5).map(|k| mean[2 * k]).sum::<f64>() / 5.0;
    let cy = (0..5).map(|k| mean[2 * k + 1]).sum::<f64>() / 5.0;
    assert!((cx - 0.5).abs() < 0.02 && (cy - 0.54).abs() < 0.03, "mean point ({cx}, {cy})");
}

#[test]
fn each_landmark_is_drawn_on_its_part_of_the_face() {
    for (yaw, pitch, roll) in [(0.0, 0.0, 0.0), (30.0, 10.0, -10.0), (-30.0, -15.0, 15.0)] {
        let scene = head(yaw, pitch, roll);
        let l = scene.landmarks();
        for (k, part) in [(0, Part::Eye), (1, Part::Eye), (2, Part::Nose)] {
            let hit = scene.trace(l[2 * k], l[2 * k + 1]).map(|h| h.0);
            assert_eq!(hit, Some(part), "landmark {k} at pose ({yaw}, {pitch}, {roll})");
        }
        // The mouth corners are the ends of the painted lips: just inside them, the lips'
        // colour (compared by chromaticity, since shading changes the brightness).
        let chroma = |c: [f32; 3]| c.map(|v| v / c.iter().sum::<f32>());
        let (cu, cv) = (0.5 * (l[6] + l[8]), 0.5 * (l[7] + l[9]));
        let lips = chroma(scene.shade(cu, cv));
        let skin = chroma(scene.shade(cu, cv + 0.2 * (l[9] - l[3]).abs().max(0.1)));
        for k in [3, 4] {
            let (u, v) = (l[2 * k], l[2 * k + 1]);
            let inside = chroma(scene.shade(u + 0.15 * (cu - u), v + 0.15 * (cv - v)));
            let to = |c: [f32; 3]| inside.iter().zip(&c).map(|(a, b)| (a - b).abs()).sum::<f32>();
            assert!(to(lips) < 0.03 && to(lips) < to(skin), "mouth corner {k} at pose ({yaw}, {pitch}, {roll}): {inside:?} vs lips {lips:?}");
        }
    }
}
