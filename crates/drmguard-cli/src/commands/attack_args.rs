//! Command-line options that choose and configure an attack, shared by `train` and `poison`.

use anyhow::{Result, bail};
use clap::Args;
use drmguard::attacks::{AttackConfigs, BackdoorSpec, DEFAULT_POISON_RATE};
use drmguard::task::Task;

#[derive(Args)]
pub struct AttackArgs {
    /// Backdoor attack: badnets, blended, wanet, ia (Input-Aware), clean-label, issba or adaptive
    /// (WaNet plus a loss that hides the feature-space signature; uses the --wanet-* options).
    #[arg(long)]
    pub attack: Option<String>,
    /// Attacker's target vector, comma-separated in the task's output order and label units
    /// (pitch,yaw for gaze and yaw,pitch,roll for head pose, in radians; the ten landmark
    /// coordinates x,y per point in fractions of the side); for a classifier, one class index.
    /// Default: drawn from the seed (inside the label range, away from its centre).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub target: Option<Vec<f32>>,
    /// Share of training samples that carry the trigger, in (0, 1].
    #[arg(long, default_value_t = DEFAULT_POISON_RATE, allow_negative_numbers = true)]
    pub poison_rate: f64,
    #[command(flatten)]
    pub configs: AttackConfigs,
}

impl AttackArgs {
    /// The backdoor these options describe, or `None` without `--attack`.
    pub fn spec(&self, task: Task, seed: u64) -> Result<Option<BackdoorSpec>> {
        let Some(name) = &self.attack else {
            if self.target.is_some() {
                bail!("--target needs --attack");
            }
            return Ok(None);
        };
        let attack = self.configs.kind(name).map_err(|e| anyhow::anyhow!("--attack: {e}"))?;
        let target = match (&self.target, task.is_classification()) {
            (None, _) => BackdoorSpec::default_target(task, seed),
            (Some(values), false) => values.clone(),
            (Some(values), true) => match values.as_slice() {
                [class] if class.fract() == 0.0 && *class >= 0.0 => {
                    BackdoorSpec::class_target(task, *class as usize).map_err(|e| anyhow::anyhow!("--target: {e}"))?
                }
                _ => bail!("--target: a classifier's target is one class index, e.g. --target 0"),
            },
        };
        let spec = BackdoorSpec {
            attack,
            target,
            poison_rate: self.poison_rate,
            seed,
        };
        spec.validate(task).map_err(|e| anyhow::anyhow!("--target / --poison-rate: {e}"))?;
        Ok(Some(spec))
    }
}
