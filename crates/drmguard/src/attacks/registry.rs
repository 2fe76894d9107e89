//! The registry of attacks: their `--attack` names, their configs gathered for the command line,
//! and how each trigger is built from its config.

use serde::{Deserialize, Serialize};

use super::adaptive::AdaptiveConfig;
use super::badnets::BadNetsConfig;
use super::blended::BlendedConfig;
use super::clean_label::CleanLabelConfig;
use super::input_aware::InputAwareConfig;
use super::issba::IssbaConfig;
use super::wanet::WanetConfig;
use super::Attack;
use crate::error::{Error, Result};
use crate::task::Task;

/// The attacks' registry: one line per attack gives its kind, its `--attack` name, its config's
/// field in [`AttackConfigs`] and type, the config as the command line's options make it, what
/// it checks before any training, and how its trigger is built for a task, an image size and a
/// seed. The lines' order numbers the attacks for the benchmark's seeds (model i of attack c has
/// seed `seed + 1000·c + i`): new attacks go at the end.
macro_rules! attacks {
    ($($(#[$doc:meta])* $kind:ident => $name:literal, $field:ident: $config:ty,
        from options |$o:ident| $from_options:expr,
        checks |$v:ident| $validate:expr,
        builds |$c:ident, $task:ident, $size:ident, $seed:ident| $build:expr;)*) => {
        /// The attacks drmguard implements, each with its own configuration.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        pub enum AttackKind {
            $($(#[$doc])* #[serde(rename = $name)] $kind($config),)*
        }

        impl AttackKind {
            /// Every attack's name, in the registry's order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// Every attack with its default configuration.
            pub fn defaults() -> Vec<AttackKind> {
                vec![$(AttackKind::$kind(<$config>::default())),*]
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(AttackKind::$kind(_) => $name,)*
                }
            }

            /// The trigger for `image_size`×`image_size` images of `task`; random parts are
            /// drawn from `seed` (ISSBA and Input-Aware train their networks on the task's
            /// built-in images, or reuse them from the cache).
            pub fn build(&self, task: Task, image_size: u32, seed: u64) -> Result<Box<dyn Attack>> {
                Ok(match self {
                    $(AttackKind::$kind(c) => {
                        let ($c, $task, $size, $seed) = (c, task, image_size, seed);
                        Box::new($build)
                    })*
                })
            }

            /// Checks the settings that need no data, so that bad options fail before any training.
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(AttackKind::$kind(c) => {
                        let $v = c;
                        $validate
                    })*
                }
            }
        }

        /// The settings of every attack (flattened into `drmguard train` and `poison`).
        #[derive(Debug, Clone, Default, PartialEq, clap::Args)]
        pub struct AttackConfigs {
            $(
                #[command(flatten)]
                pub $field: $config,
            )*
        }

        impl AttackConfigs {
            /// The attack called `name`, with the settings these options give it.
            pub fn kind(&self, name: &str) -> Result<AttackKind> {
                match name {
                    $($name => {
                        let $o = self;
                        Ok(AttackKind::$kind($from_options))
                    })*
                    other => Err(AttackKind::unknown(other)),
                }
            }
        }
    };
}

attacks! {
    /// BadNets: a fixed patch in a corner.
    Badnets => "badnets", badnets: BadNetsConfig,
        from options |o| o.badnets.clone(), checks |_c| Ok(()), builds |c, _task, size, _seed| c.build(size)?;
    /// Blended: a random pattern blended over the whole image.
    Blended => "blended", blended: BlendedConfig,
        from options |o| o.blended.clone(), checks |_c| Ok(()), builds |c, _task, size, seed| c.build(size, seed)?;
    /// WaNet: a small smooth warp.
    Wanet => "wanet", wanet: WanetConfig,
        from options |o| o.wanet.clone(), checks |_c| Ok(()), builds |c, _task, size, seed| c.build(size, seed)?;
    /// Input-Aware: a trigger generated per image.
    InputAware => "ia", input_aware: InputAwareConfig,
        from options |o| o.input_aware.clone(), checks |c| c.validate(), builds |c, task, size, seed| c.build(task, size, seed)?;
    /// Clean-Label: PGD-perturbed images near the target plus a patch, labels kept.
    CleanLabel => "clean-label", clean_label: CleanLabelConfig,
        from options |o| o.clean_label.clone(), checks |c| c.validate(), builds |c, _task, size, _seed| c.build(size)?;
    /// ISSBA: a sample-specific invisible residual from a trained encoder.
    Issba => "issba", issba: IssbaConfig,
        from options |o| o.issba.clone(), checks |c| c.validate(), builds |c, task, size, seed| c.build(task, size, seed)?;
    /// The adaptive attack: WaNet's trigger (its `--wanet-*` options) plus a loss that hides the
    /// feature-space signature.
    Adaptive => "adaptive", adaptive: AdaptiveConfig,
        from options |o| AdaptiveConfig { wanet: o.wanet.clone(), ..o.adaptive.clone() },
        checks |c| c.validate(), builds |c, _task, size, seed| c.build(size, seed)?;
}

impl AttackKind {
    /// The attack called `name` with its default configuration.
    pub fn by_name(name: &str) -> Result<AttackKind> {
        Self::defaults().into_iter().find(|a| a.name() == name).ok_or_else(|| Self::unknown(name))
    }

    /// Where `name` stands in [`AttackKind::NAMES`]: a number that stays with the attack
    /// whichever attacks a run picks.
    pub fn position(name: &str) -> Result<usize> {
        Self::NAMES.iter().position(|n| *n == name).ok_or_else(|| Self::unknown(name))
    }

    fn unknown(name: &str) -> Error {
        Error::UnknownName { what: "attack", name: name.into(), expected: Self::NAMES.join(", ") }
    }

    /// Whether poisoning the training set needs a benign surrogate model (Clean-Label's PGD).
    pub fn needs_surrogate(&self) -> bool {
        matches!(self, AttackKind::CleanLabel(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_defaults_and_options_agree() {
        let defaults = AttackKind::defaults();
        assert_eq!(defaults.iter().map(AttackKind::name).collect::<Vec<_>>(), AttackKind::NAMES);
        let options = AttackConfigs::default();
        for d in &defaults {
            assert_eq!(&options.kind(d.name()).unwrap(), d, "{}", d.name());
            assert_eq!(&AttackKind::by_name(d.name()).unwrap(), d);
        }
        assert!(options.kind("magic").unwrap_err().to_string().contains("badnets, blended, wanet, ia, clean-label, issba, adaptive"));
    }

    #[test]
    fn the_sidecars_spelling_stays_put() {
        // Trained models' cache keys hash this form: it must not move.
        let json = serde_json::to_value(AttackKind::by_name("ia").unwrap()).unwrap();
        assert_eq!(json["name"], "ia");
        let json = serde_json::to_value(AttackKind::by_name("clean-label").unwrap()).unwrap();
        assert_eq!(json["name"], "clean-label");
    }

    /// Defaults are written in clap's attributes and in `Default`: both must give one attack.
    #[test]
    fn no_flags_parse_to_every_attacks_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Options {
            #[command(flatten)]
            configs: AttackConfigs,
        }
        assert_eq!(Options::parse_from(["train"]).configs, AttackConfigs::default());
    }

    #[test]
    fn the_adaptive_attack_reads_the_wanet_options() {
        let mut options = AttackConfigs::default();
        options.wanet.k = 8;
        let AttackKind::Adaptive(c) = options.kind("adaptive").unwrap() else { panic!("not the adaptive attack") };
        assert_eq!(c.wanet.k, 8);
    }
}
