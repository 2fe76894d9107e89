//! Synthetic head-pose images: a 3-D head made of ellipsoids (skull, nose, ears, eyes) with painted
//! features (hair, brows, irises, mouth), ray-cast through a pinhole camera and Lambert-shaded.
//!
//! Axes: camera x right, y down, z forward (away from the viewer). In head coordinates the face
//! looks along −z, x is the head's right-hand side as seen in the image, y points down. The pose
//! (yaw, pitch, roll) gives R = Rz(roll) · Rx(−pitch) · Ry(−yaw), so yaw > 0 turns the nose towards
//! the image's right, pitch > 0 lifts it, roll > 0 tilts the top of the head to the right.

use image::RgbImage;
use rand::Rng;

use super::raster::{Background, Rgb, hair_colour, lerp, rasterise, sample_rng, scale, skin_tone, supersampling, uniform};
use crate::task::DEG;

const STREAM: u64 = 2;
const LANDMARK_STREAM: u64 = 3;

pub type Vec3 = [f32; 3];
pub type Mat3 = [[f32; 3]; 3];

fn dot(a: Vec3, b: Vec3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn mat_vec(m: &Mat3, v: Vec3) -> Vec3 {
    [dot(m[0], v), dot(m[1], v), dot(m[2], v)]
}

fn mat_t_vec(m: &Mat3, v: Vec3) -> Vec3 {
    [
        m[0][0] * v[0] + m[1][0] * v[1] + m[2][0] * v[2],
        m[0][1] * v[0] + m[1][1] * v[1] + m[2][1] * v[2],
        m[0][2] * v[0] + m[1][2] * v[1] + m[2][2] * v[2],
    ]
}

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// Head-to-camera rotation for a pose in radians (see the module docs for the convention).
pub fn rotation(yaw: f32, pitch: f32, roll: f32) -> Mat3 {
    let (sy, cy) = (-yaw).sin_cos();
    let (sp, cp) = (-pitch).sin_cos();
    let (sr, cr) = roll.sin_cos();
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
    let rz = [[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]];
    mat_mul(&rz, &mat_mul(&rx, &ry))
}

/// The parts of the head, for shading and for tests that check where each part lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Skull,
    Nose,
    Ear,
    Eye,
}

#[derive(Debug, Clone, Copy)]
struct Ellipsoid {
    centre: Vec3,
    radii: Vec3,
    part: Part,
}

impl Ellipsoid {
    /// Distance along the ray (origin `o`, direction `d`, head coordinates) to the first hit.
    fn hit(&self, o: Vec3, d: Vec3) -> Option<f32> {
        let oc = [
            (o[0] - self.centre[0]) / self.radii[0],
            (o[1] - self.centre[1]) / self.radii[1],
            (o[2] - self.centre[2]) / self.radii[2],
        ];
        let dd = [d[0] / self.radii[0], d[1] / self.radii[1], d[2] / self.radii[2]];
        let a = dot(dd, dd);
        let b = dot(oc, dd);
        let c = dot(oc, oc) - 1.0;
        let disc = b * b - a * c;
        if disc < 0.0 {
            return None;
        }
        let t = (-b - disc.sqrt()) / a;
        (t > 0.0).then_some(t)
    }

    fn normal(&self, p: Vec3) -> Vec3 {
        let n = [
            (p[0] - self.centre[0]) / (self.radii[0] * self.radii[0]),
            (p[1] - self.centre[1]) / (self.radii[1] * self.radii[1]),
            (p[2] - self.centre[2]) / (self.radii[2] * self.radii[2]),
        ];
        let len = dot(n, n).sqrt();
        [n[0] / len, n[1] / len, n[2] / len]
    }
}

/// Every random choice behind one head-pose image; the label is `(yaw, pitch, roll)`.
#[derive(Debug, Clone)]
pub struct HeadScene {
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
    /// Head centre in camera coordinates.
    pub position: Vec3,
    /// Focal length in image widths.
    pub focal: f32,
    rotation: Mat3,
    parts: Vec<Ellipsoid>,
    skin: Rgb,
    hair: Rgb,
    iris: Rgb,
    lips: Rgb,
    hairline: f32,
    hair_length: f32,
    light: Vec3,
    ambient: f32,
    noise: f32,
    background: Background,
}

impl HeadScene {
    pub fn random(rng: &mut impl Rng) -> Self {
        let yaw = uniform(rng, -60.0, 60.0) * DEG;
        let pitch = uniform(rng, -40.0, 40.0) * DEG;
        let roll = uniform(rng, -30.0, 30.0) * DEG;
        let w = uniform(rng, 0.64, 0.78);
        let h = uniform(rng, 0.86, 1.0);
        let depth = uniform(rng, 0.78, 0.9);
        let nose_len = uniform(rng, 0.16, 0.28);
        let eye_x = uniform(rng, 0.24, 0.31);
        let eye_y = uniform(rng, -0.18, -0.08);
        // The eyes sit on the skull's front surface, slightly sunk in.
        let eye_z = -depth * (1.0 - (eye_x / w).powi(2) - (eye_y / h).powi(2)).max(0.0).sqrt() + 0.05;
        let eye_r = uniform(rng, 0.09, 0.12);
        let mut parts = vec![
            Ellipsoid { centre: [0.0, 0.0, 0.0], radii: [w, h, depth], part: Part::Skull },
            Ellipsoid {
                centre: [0.0, 0.12, -depth + 0.02],
                radii: [uniform(rng, 0.09, 0.13), uniform(rng, 0.2, 0.26), nose_len],
                part: Part::Nose,
            },
        ];
        for side in [-1.0f32, 1.0] {
            parts.push(Ellipsoid {
                centre: [side * (w - 0.02), 0.05, 0.05],
                radii: [0.09, uniform(rng, 0.17, 0.23), 0.13],
                part: Part::Ear,
            });
            parts.push(Ellipsoid {
                centre: [side * eye_x, eye_y, eye_z],
                radii: [eye_r, eye_r * 0.6, 0.08],
                part: Part::Eye,
            });
        }
        let (lx, ly) = (uniform(rng, -0.7, 0.7), uniform(rng, -0.8, 0.3));
        let lz = -(1.0 - lx * lx - ly * ly).max(0.05).sqrt();
        let distance = uniform(rng, 3.6, 4.6);
        HeadScene {
            yaw,
            pitch,
            roll,
            position: [uniform(rng, -0.25, 0.25), uniform(rng, -0.2, 0.25), distance],
            focal: uniform(rng, 1.5, 1.8),
            rotation: rotation(yaw, pitch, roll),
            parts,
            skin: skin_tone(rng),
            hair: hair_colour(rng),
            iris: scale([0.2, 0.15, 0.1], uniform(rng, 0.6, 1.6)),
            lips: [uniform(rng, 0.5, 0.75), uniform(rng, 0.2, 0.35), uniform(rng, 0.2, 0.35)],
            hairline: uniform(rng, -0.62, -0.4),
            hair_length: uniform(rng, -0.1, 0.6),
            light: [lx, ly, lz],
            ambient: uniform(rng, 0.3, 0.55),
            noise: uniform(rng, 0.005, 0.03),
            background: Background::random(rng),
        }
    }

    /// The same head, background and lighting under another pose.
    pub fn with_pose(mut self, yaw: f32, pitch: f32, roll: f32) -> Self {
        self.yaw = yaw;
        self.pitch = pitch;
        self.roll = roll;
        self.rotation = rotation(yaw, pitch, roll);
        self
    }

    /// Projects a point given in head coordinates to image coordinates in [0, 1].
    pub fn project(&self, head_point: Vec3) -> [f32; 2] {
        let p = mat_vec(&self.rotation, head_point);
        let c = [p[0] + self.position[0], p[1] + self.position[1], p[2] + self.position[2]];
        [0.5 + self.focal * c[0] / c[2], 0.5 + self.focal * c[1] / c[2]]
    }

    /// Where the tip of the nose points: the head-coordinate point in front of the face.
    pub fn nose_tip(&self) -> Vec3 {
        let nose = self.parts[1];
        [nose.centre[0], nose.centre[1], nose.centre[2] - nose.radii[2]]
    }

    /// The five landmarks in the image, as (x, y) fractions of the side: left eye, right eye
    /// (the fronts of the eyeballs), nose tip, left and right mouth corner (on the skull's
    /// surface), where left is the image's left ([`crate::task::Task::Landmarks`]'s order).
    /// Points on the far side of a turned head are projected all the same, as landmark datasets
    /// label occluded points.
    pub fn landmarks(&self) -> [f32; 10] {
        let eye = |e: &Ellipsoid| [e.centre[0], e.centre[1], e.centre[2] - e.radii[2]];
        let skull = self.parts[0];
        let [w, h, depth] = skull.radii;
        let mouth = |x: f32| {
            let y = 0.5;
            [x, y, -depth * (1.0 - (x / w).powi(2) - (y / h).powi(2)).max(0.0).sqrt()]
        };
        // parts: skull, nose, then (ear, eye) for the side −1 (the image's left), then side +1.
        let points = [eye(&self.parts[3]), eye(&self.parts[5]), self.nose_tip(), mouth(-0.2), mouth(0.2)];
        let mut out = [0.0; 10];
        for (k, p) in points.into_iter().enumerate() {
            let [u, v] = self.project(p);
            out[2 * k] = u;
            out[2 * k + 1] = v;
        }
        out
    }

    /// The part seen at (u, v) and its head-coordinate hit point and normal, if any.
    pub fn trace(&self, u: f32, v: f32) -> Option<(Part, Vec3, Vec3)> {
        let d_cam = [(u - 0.5) / self.focal, (v - 0.5) / self.focal, 1.0];
        let o = mat_t_vec(&self.rotation, [-self.position[0], -self.position[1], -self.position[2]]);
        let d = mat_t_vec(&self.rotation, d_cam);
        let (t, e) = self
            .parts
            .iter()
            .filter_map(|e| e.hit(o, d).map(|t| (t, e)))
            .min_by(|a, b| a.0.total_cmp(&b.0))?;
        let p = [o[0] + t * d[0], o[1] + t * d[1], o[2] + t * d[2]];
        Some((e.part, p, e.normal(p)))
    }

    fn albedo(&self, part: Part, p: Vec3) -> Rgb {
        match part {
            Part::Nose => scale(self.skin, 0.97),
            Part::Ear => scale(self.skin, 0.9),
            Part::Eye => {
                let eye = self.parts.iter().find(|e| e.part == Part::Eye && (e.centre[0] - p[0]).abs() < 0.2);
                let r = eye.map_or(1.0, |e| ((p[0] - e.centre[0]).powi(2) + (p[1] - e.centre[1]).powi(2)).sqrt() / e.radii[1]);
                if r < 0.35 {
                    [0.03, 0.03, 0.03]
                } else if r < 0.8 {
                    self.iris
                } else {
                    [0.92, 0.9, 0.88]
                }
            }
            Part::Skull => {
                let [x, y, z] = p;
                let front = z < -0.3;
                let hair = y < self.hairline + 0.25 * (z + 0.8).max(0.0)
                    || (z > 0.15 && y < self.hair_length)
                    || (!front && y < self.hairline + 0.3 && x.abs() > 0.55);
                if hair {
                    return self.hair;
                }
                if front {
                    for side in [-1.0f32, 1.0] {
                        let brow = self.parts[3 + if side < 0.0 { 0 } else { 2 }].centre;
                        let bx = (x - brow[0]) / 0.14;
                        let by = y - (brow[1] - 0.13 + 0.04 * bx * bx);
                        if bx.abs() < 1.0 && by.abs() < 0.03 {
                            return lerp(self.skin, self.hair, 0.9);
                        }
                    }
                    let mx = x / 0.2;
                    let my = (y - 0.5) / 0.045;
                    if mx * mx + my * my < 1.0 {
                        return self.lips;
                    }
                }
                self.skin
            }
        }
    }

    pub fn shade(&self, u: f32, v: f32) -> Rgb {
        let Some((part, p, n_head)) = self.trace(u, v) else {
            return self.background.at(u, v);
        };
        let n = mat_vec(&self.rotation, n_head);
        // `light` points from the surface towards the source (in front of the face: z < 0).
        let diffuse = dot(n, self.light).max(0.0);
        scale(self.albedo(part, p), self.ambient + (1.0 - self.ambient) * diffuse)
    }

    pub fn render(&self, size: u32, rng: &mut impl Rng) -> RgbImage {
        rasterise(size, supersampling(size), self.noise, rng, |u, v| self.shade(u, v))
    }
}

/// Sample `index` of the synthetic head-pose dataset drawn with `seed`: image and (yaw, pitch, roll).
pub fn sample(seed: u64, index: u64, size: u32) -> (RgbImage, Vec<f32>) {
    let mut rng = sample_rng(seed, STREAM, index);
    let scene = HeadScene::random(&mut rng);
    let image = scene.render(size, &mut rng);
    (image, vec![scene.yaw, scene.pitch, scene.roll])
}

/// A head framed as a face detector crops it (MTCNN's ONet input): the eyes about a third of the
/// way down, the mouth at about four fifths, poses narrower than the head-pose task's (yaw ±40°,
/// pitch ±25°, roll ±20°), as in face-alignment datasets.
pub fn landmark_scene(rng: &mut impl Rng) -> HeadScene {
    let scene = HeadScene::random(rng);
    let (yaw, pitch, roll) = (scene.yaw * 2.0 / 3.0, scene.pitch * 0.625, scene.roll * 2.0 / 3.0);
    // MTCNN's ONet places the eyes about 0.38 of the side apart and the mean of the five points
    // at about (0.52, 0.54).
    let centre = [uniform(rng, 0.47, 0.53), uniform(rng, 0.51, 0.57)];
    let distance = uniform(rng, 2.8, 3.4);
    frame_face(scene.with_pose(yaw, pitch, roll), distance, centre)
}

/// Moves the head (at `distance`) so that the mean of its landmarks lands on `centre`, as a
/// detector's crop follows the face rather than the skull.
fn frame_face(mut scene: HeadScene, distance: f32, centre: [f32; 2]) -> HeadScene {
    scene.position = [0.0, 0.0, distance];
    // Projection is nearly affine in the head's position at this depth: two steps suffice.
    for _ in 0..2 {
        let mean = landmark_centre(&scene.landmarks());
        for axis in 0..2 {
            scene.position[axis] += (centre[axis] - mean[axis]) * distance / scene.focal;
        }
    }
    scene
}

/// The mean (x, y) of five landmarks.
fn landmark_centre(l: &[f32; 10]) -> [f32; 2] {
    [0, 1].map(|axis| l.iter().skip(axis).step_by(2).sum::<f32>() / 5.0)
}

/// Sample `index` of the synthetic landmark dataset drawn with `seed`: image and the five
/// landmarks as (x, y) fractions of the side.
pub fn landmark_sample(seed: u64, index: u64, size: u32) -> (RgbImage, Vec<f32>) {
    let mut rng = sample_rng(seed, LANDMARK_STREAM, index);
    let scene = landmark_scene(&mut rng);
    let image = scene.render(size, &mut rng);
    (image, scene.landmarks().to_vec())
}

/// A framed head ([`landmark_scene`]) under another pose, framed again.
pub fn reframed_with_pose(scene: HeadScene, yaw: f32, pitch: f32, roll: f32) -> HeadScene {
    let distance = scene.position[2];
    let centre = landmark_centre(&scene.landmarks());
    frame_face(scene.with_pose(yaw, pitch, roll), distance, centre)
}
