//! Synthetic gaze images: a face crop around both eyes, with an eyeball model that puts iris and
//! pupil where the gaze points.
//!
//! Geometry: each eye is a sphere of radius R seen orthographically, centred behind its eyelid
//! opening. The gaze g = (cos p · sin y, −sin p, cos p · cos y) (image x right, y down, z towards the
//! camera) picks the iris: the cap of the sphere within the iris's angular radius of g. So the iris
//! moves by R·(cos p · sin y, −sin p) and is foreshortened exactly as a real eyeball's would be, in
//! both eyes. The eyelids clip it, and the upper lid follows the pitch a little, as in photos.
//! Identity, lighting, head position, scale and roll, background and sensor noise vary per sample.

use image::RgbImage;
use rand::Rng;

use super::raster::{Background, Rgb, hair_colour, lerp, rasterise, sample_rng, scale, skin_tone, supersampling, uniform};

/// Stream id that separates gaze samples from other generators that share a seed.
const STREAM: u64 = 1;

/// Every random choice behind one gaze image; the label is `(pitch, yaw)`.
#[derive(Debug, Clone)]
pub struct GazeScene {
    pub pitch: f32,
    pub yaw: f32,
    /// Centre of the line between the eyes, in [0, 1] image units.
    pub centre: [f32; 2],
    pub scale: f32,
    pub roll: f32,
    /// Horizontal shift of the features inside the face outline (a small head turn).
    pub shift: f32,
    pub eye_half_width: f32,
    pub eye_half_spacing: f32,
    pub lid_upper: f32,
    pub lid_lower: f32,
    pub eyeball_radius: f32,
    pub iris_sin: f32,
    pub pupil_fraction: f32,
    pub skin: Rgb,
    pub brow: Rgb,
    pub iris: Rgb,
    pub light: [f32; 3],
    pub ambient: f32,
    pub intensity: f32,
    pub noise: f32,
    background: Background,
}

impl GazeScene {
    /// Draws a scene from `rng`; the label comes first so that it is uniform in its range.
    pub fn random(rng: &mut impl Rng) -> Self {
        let pitch = uniform(rng, -0.4, 0.4);
        let yaw = uniform(rng, -0.6, 0.6);
        let s = uniform(rng, 0.85, 1.15);
        let a = 0.12 * s * uniform(rng, 0.88, 1.12);
        const IRIS: [Rgb; 5] = [
            [0.30, 0.17, 0.08],
            [0.15, 0.09, 0.05],
            [0.25, 0.42, 0.62],
            [0.30, 0.45, 0.28],
            [0.45, 0.48, 0.50],
        ];
        let (lx, ly) = (uniform(rng, -0.7, 0.7), uniform(rng, -0.7, 0.5));
        let lz = (1.0 - lx * lx - ly * ly).max(0.05).sqrt();
        GazeScene {
            pitch,
            yaw,
            centre: [0.5 + uniform(rng, -0.06, 0.06), 0.42 + uniform(rng, -0.06, 0.06)],
            scale: s,
            roll: uniform(rng, -0.15, 0.15),
            shift: uniform(rng, -0.03, 0.03) * s,
            eye_half_width: a,
            eye_half_spacing: 0.24 * s * uniform(rng, 0.94, 1.06),
            lid_upper: a * uniform(rng, 0.45, 0.7),
            lid_lower: a * uniform(rng, 0.3, 0.45),
            eyeball_radius: a * uniform(rng, 0.85, 1.0),
            iris_sin: uniform(rng, 0.42, 0.52),
            pupil_fraction: uniform(rng, 0.3, 0.5),
            skin: skin_tone(rng),
            brow: hair_colour(rng),
            iris: scale(IRIS[rng.random_range(0..IRIS.len())], uniform(rng, 0.8, 1.2)),
            light: [lx, ly, lz],
            ambient: uniform(rng, 0.35, 0.6),
            intensity: uniform(rng, 0.55, 0.9),
            noise: uniform(rng, 0.005, 0.035),
            background: Background::random(rng),
        }
    }

    /// The unit gaze vector in image axes (x right, y down, z towards the camera).
    pub fn gaze_vector(&self) -> [f32; 3] {
        let (p, y) = (self.pitch, self.yaw);
        [p.cos() * y.sin(), -p.sin(), p.cos() * y.cos()]
    }

    fn face_coords(&self, u: f32, v: f32) -> [f32; 2] {
        let (s, c) = (-self.roll).sin_cos();
        let (du, dv) = (u - self.centre[0], v - self.centre[1]);
        [c * du - s * dv, s * du + c * dv]
    }

    fn image_coords(&self, q: [f32; 2]) -> [f32; 2] {
        let (s, c) = self.roll.sin_cos();
        [
            self.centre[0] + c * q[0] - s * q[1],
            self.centre[1] + s * q[0] + c * q[1],
        ]
    }

    /// Image position of eye `side` (−1 left, +1 right): the centre of its eyeball.
    pub fn eye_centre(&self, side: f32) -> [f32; 2] {
        self.image_coords([side * self.eye_half_spacing + self.shift, 0.0])
    }

    /// Image position of the centre of eye `side`'s pupil.
    pub fn pupil_centre(&self, side: f32) -> [f32; 2] {
        let e = self.eye_centre(side);
        let g = self.gaze_vector();
        [e[0] + self.eyeball_radius * g[0], e[1] + self.eyeball_radius * g[1]]
    }

    /// Eyelid opening at horizontal offset `x` from the eye centre: (upper, lower) extents.
    fn lids(&self, x: f32) -> Option<(f32, f32)> {
        let t = x / self.eye_half_width;
        if t.abs() >= 1.0 {
            return None;
        }
        let shape = 1.0 - t * t;
        // Looking up raises the upper lid, looking down lowers it.
        let upper = self.lid_upper * (1.0 + 0.6 * self.pitch) * shape;
        let lower = self.lid_lower * (1.0 - 0.3 * self.pitch) * shape.sqrt();
        Some((upper, lower))
    }

    fn skin_shading(&self, q: [f32; 2]) -> Option<f32> {
        let s = self.scale;
        let (rx, ry) = (0.56 * s, 0.78 * s);
        let (x, y) = ((q[0] - 0.5 * self.shift) / rx, (q[1] - 0.2 * s) / ry);
        let r2 = x * x + y * y;
        if r2 >= 1.0 {
            return None;
        }
        let n = [x, y, (1.0 - r2).sqrt()];
        let l = self.light;
        let diffuse = (n[0] * l[0] + n[1] * l[1] + n[2] * l[2]).max(0.0);
        Some(self.ambient + self.intensity * diffuse)
    }

    /// The colour of the eye region at image point (u, v), if the point lies inside an eye opening.
    fn eye_colour(&self, u: f32, v: f32, q: [f32; 2], side: f32, light: f32) -> Option<Rgb> {
        let ex = side * self.eye_half_spacing + self.shift;
        let (lx, ly) = (q[0] - ex, q[1]);
        let (upper, lower) = self.lids(lx)?;
        if ly <= -upper || ly >= lower {
            return None;
        }
        let centre = self.eye_centre(side);
        let r = self.eyeball_radius;
        let (dx, dy) = ((u - centre[0]) / r, (v - centre[1]) / r);
        let d2 = dx * dx + dy * dy;
        let dz = (1.0 - d2).max(0.0).sqrt();
        let g = self.gaze_vector();
        let cos_to_gaze = dx * g[0] + dy * g[1] + dz * g[2];
        let cos_iris = (1.0 - self.iris_sin * self.iris_sin).sqrt();
        let pupil_sin = self.iris_sin * self.pupil_fraction;
        let cos_pupil = (1.0 - pupil_sin * pupil_sin).sqrt();
        let mut colour = if d2 < 1.0 && cos_to_gaze > cos_pupil {
            [0.03, 0.03, 0.03]
        } else if d2 < 1.0 && cos_to_gaze > cos_iris {
            // Darker limbus ring at the iris's edge.
            let t = (cos_to_gaze - cos_iris) / (cos_pupil - cos_iris);
            scale(self.iris, 0.55 + 0.45 * t.min(1.0).sqrt())
        } else {
            scale([0.93, 0.89, 0.86], 0.75 + 0.25 * dz)
        };
        // The upper lid casts a shadow on the eyeball.
        let from_lid = (ly + upper) / (upper + lower);
        colour = scale(colour, 0.6 + 0.4 * (from_lid * 3.0).min(1.0));
        colour = scale(colour, light);
        // Corneal reflection of the light source: fixed on the eyeball, it does not follow the gaze.
        let glint = [-0.35 * self.light[0], -0.35 * self.light[1]];
        if (dx - glint[0]).powi(2) + (dy - glint[1]).powi(2) < 0.015 {
            colour = lerp(colour, [1.0, 1.0, 1.0], 0.85);
        }
        Some(colour)
    }

    /// The colour at image point (u, v).
    pub fn shade(&self, u: f32, v: f32) -> Rgb {
        let q = self.face_coords(u, v);
        let Some(light) = self.skin_shading(q) else {
            return self.background.at(u, v);
        };
        for side in [-1.0f32, 1.0] {
            if let Some(c) = self.eye_colour(u, v, q, side, light) {
                return c;
            }
        }
        let s = self.scale;
        let mut colour = scale(self.skin, light);
        for side in [-1.0f32, 1.0] {
            let ex = side * self.eye_half_spacing + self.shift;
            let lx = q[0] - ex;
            let t = lx / self.eye_half_width;
            // Eyelashes along the upper lid, a crease above it.
            if let Some((upper, _)) = self.lids(lx) {
                let above = -upper - q[1];
                if (0.0..0.014 * s).contains(&above) {
                    colour = lerp(colour, [0.05, 0.04, 0.04], 0.85);
                } else if (0.045 * s..0.055 * s).contains(&above) {
                    colour = scale(colour, 0.85);
                }
            }
            // Brows.
            if t.abs() < 1.25 {
                let brow_y = -self.lid_upper - 0.09 * s + 0.03 * s * t * t;
                let thickness = 0.022 * s * (1.0 - 0.5 * t.abs() / 1.25);
                if (q[1] - brow_y).abs() < thickness {
                    colour = lerp(colour, scale(self.brow, light), 0.9);
                }
            }
        }
        // Nose: ridge shading and nostrils.
        let nx = q[0] - self.shift;
        if (0.03 * s..0.055 * s).contains(&nx.abs()) && (0.10 * s..0.36 * s).contains(&q[1]) {
            colour = scale(colour, 0.85);
        }
        for side in [-1.0f32, 1.0] {
            let (dx, dy) = ((nx - side * 0.05 * s) / (0.025 * s), (q[1] - 0.42 * s) / (0.015 * s));
            if dx * dx + dy * dy < 1.0 {
                colour = scale(colour, 0.45);
            }
        }
        colour
    }

    pub fn render(&self, size: u32, rng: &mut impl Rng) -> RgbImage {
        rasterise(size, supersampling(size), self.noise, rng, |u, v| self.shade(u, v))
    }
}

/// Sample `index` of the synthetic gaze dataset drawn with `seed`: the image and (pitch, yaw).
pub fn sample(seed: u64, index: u64, size: u32) -> (RgbImage, Vec<f32>) {
    let mut rng = sample_rng(seed, STREAM, index);
    let scene = GazeScene::random(&mut rng);
    let image = scene.render(size, &mut rng);
    (image, vec![scene.pitch, scene.yaw])
}
