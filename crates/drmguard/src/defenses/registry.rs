//! The registry of detectors and mitigators: their `--defense` names, their configs gathered for
//! the command line, and how each is built from its config.

use serde::{Deserialize, Serialize};

use super::{
    Abs, AbsConfig, Agnostic, AgnosticConfig, Anp, AnpConfig, Detector, DrmGuard, DrmGuardConfig, DrmGuardRepair, FeatureRe, FeatureReConfig, FinePruning,
    DrmGuardTest, FinePruningConfig, FineTuning, FineTuningConfig, Mitigator, NcUnlearning, NeuralCleanse, NeuralCleanseConfig, NeuronNoise, NeuronNoiseConfig, UnlearnConfig,
    WarpCollapseConfig, WarpCollapseSearch,
};
use super::blend::BlendConfig;
use super::class_repair::Shapes;
use super::warp::WarpConfig;
use crate::error::{Error, Result};
use crate::task::Task;

/// The detectors' registry: one line per detector gives its kind (`--defense` name), its
/// config's field in [`DetectorConfigs`] and type, the heading of its options in `--help`, and
/// how the detector is built from its config. `DetectorKind`, `DetectorConfigs` and the lookups
/// between them are generated from it, so that a detector is added with its file and one line.
macro_rules! detectors {
    ($($(#[$doc:meta])* $kind:ident => $field:ident: $config:ty, $heading:tt, |$c:ident, $all:pat_param| $build:expr;)*) => {
        /// Detectors, for `drmguard scan --defense`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(rename_all = "kebab-case")]
        pub enum DetectorKind {
            $($(#[$doc])* $kind,)*
        }

        impl DetectorKind {
            /// Every detector, in the registry's order.
            pub const ALL: &[DetectorKind] = &[$(DetectorKind::$kind),*];
        }

        /// The settings of every detector (flattened into `drmguard scan`'s options).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
        pub struct DetectorConfigs {
            $(
                #[command(flatten, next_help_heading = $heading)]
                #[serde(default)]
                pub $field: $config,
            )*
        }

        impl DetectorConfigs {
            /// The detector `kind`, with its settings.
            pub fn build(&self, kind: DetectorKind) -> Box<dyn Detector> {
                match kind {
                    $(DetectorKind::$kind => {
                        let ($c, $all) = (self.$field.clone(), self);
                        Box::new($build)
                    })*
                }
            }

            /// The settings of detector `kind`'s own config.
            fn own_settings(&self, kind: DetectorKind) -> serde_json::Value {
                match kind {
                    $(DetectorKind::$kind => serde_json::json!(self.$field),)*
                }
            }
        }
    };
}

detectors! {
    /// DRMGuard: by default its calibrated verdict (the input-agnostic reversal against reference
    /// models, scaled to the suspect's quality, and on a regression model the warp collapse
    /// beside it); `--drmguard-test generator`, the paper's test (a generator that collapses the
    /// outputs with a small edit).
    Drmguard => drmguard: DrmGuardConfig, "DRMGuard (--defense drmguard)", |c, all| {
        let warp = c.warp_signal.then(|| all.warp.clone());
        DrmGuard::with_verdict(c, all.agnostic.clone()).with_warp(warp)
    };
    /// Neural Cleanse: mask, pattern and a free target vector; score = the mask's share of the image.
    Nc => nc: NeuralCleanseConfig, "Neural Cleanse (--defense nc)", |c, _| NeuralCleanse { config: c };
    /// FeatureRE: an input transform plus a feature-space mask towards a free target vector.
    Featurere => featurere: FeatureReConfig, "FeatureRE (--defense featurere)", |c, _| FeatureRe { config: c };
    /// ABS: stimulate inner neurons, reverse-engineer triggers for the most elevating ones.
    Abs => abs: AbsConfig, "ABS (--defense abs)", |c, _| Abs { config: c };
    /// Neuron noise: bounded adversarial noise on the BatchNorm channels that collapses the
    /// outputs on clean images; score = the spread ratio it reaches.
    Noise => noise: NeuronNoiseConfig, "Neuron noise (--defense noise)", |c, _| NeuronNoise { config: c };
    /// Input-agnostic reversal: one mask and pattern that collapse the suspect but not the
    /// defender's reference models, kept smooth; score = the mask's share of the image.
    Agnostic => agnostic: AgnosticConfig, "Input-agnostic reversal (--defense agnostic)", |c, _| Agnostic { config: c };
    /// Warp collapse: the smooth bounded warp of the images (a warp trigger's shape, which no
    /// mask expresses) that collapses the outputs best; score = the spread ratio it reaches.
    Warp => warp: WarpCollapseConfig, "Warp collapse (--defense warp)", |c, _| WarpCollapseSearch { config: c };
}

/// The mitigators' registry. The settings come first, one line each with its heading in
/// `--help` (several mitigators share one: unlearning, fine-tuning); then one line per
/// mitigator gives its kind (`--defense` name), the settings it reads, what it checks before
/// spending time, and how it is built. `MitigatorKind`, `MitigatorConfigs` and the lookups
/// between them are generated from it.
macro_rules! mitigators {
    (
        settings { $($field:ident: $config:ty, $heading:tt;)* }
        kinds { $($(#[$doc:meta])* $kind:ident reads [$($reads:ident),+], checks |$v:ident| $validate:expr, builds |$c:ident| $build:expr;)* }
    ) => {
        /// Mitigators, for `drmguard mitigate --defense`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(rename_all = "kebab-case")]
        pub enum MitigatorKind {
            $($(#[$doc])* $kind,)*
        }

        impl MitigatorKind {
            /// Every mitigator, in the registry's order.
            pub const ALL: &[MitigatorKind] = &[$(MitigatorKind::$kind),*];
        }

        /// The settings of every mitigator (flattened into `drmguard mitigate`'s options).
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
        pub struct MitigatorConfigs {
            $(
                #[command(flatten, next_help_heading = $heading)]
                #[serde(default)]
                pub $field: $config,
            )*
        }

        impl MitigatorConfigs {
    /// These settings with the defaults that depend on the task filled in (the unlearning
    /// learning rate), so that a cache key changes with them.
    pub fn for_task(&self, task: Task) -> MitigatorConfigs {
        let mut c = self.clone();
        c.unlearn.learning_rate = Some(c.unlearn.learning_rate.unwrap_or_else(|| super::unlearn::default_learning_rate(task)));
        c
    }

            /// Refuses the settings mitigator `kind` reads where no run could use them, so that a
            /// bad value stops a run before its reverse engineering or pruning spends time.
            pub fn validate(&self, kind: MitigatorKind) -> Result<()> {
                match kind {
                    $(MitigatorKind::$kind => {
                        let $v = self;
                        $validate
                    })*
                }
            }

            /// The mitigator `kind`, with its settings.
            pub fn build(&self, kind: MitigatorKind) -> Box<dyn Mitigator> {
                match kind {
                    $(MitigatorKind::$kind => {
                        let $c = self;
                        Box::new($build)
                    })*
                }
            }

            /// The settings of the configs mitigator `kind` names: the one config, or the list
            /// of them in the registry's order.
            fn own_settings(&self, kind: MitigatorKind) -> serde_json::Value {
                match kind {
                    $(MitigatorKind::$kind => {
                        let mut read = vec![$(serde_json::json!(self.$reads)),+];
                        if read.len() == 1 { read.remove(0) } else { serde_json::Value::Array(read) }
                    })*
                }
            }
        }
    };
}

mitigators! {
    settings {
        drmguard: DrmGuardConfig, "DRMGuard (--defense drmguard)";
        unlearn: UnlearnConfig, "Unlearning (--defense drmguard, nc, agnostic)";
        ft: FineTuningConfig, "Fine-tuning (--defense ft, fp)";
        fp: FinePruningConfig, "Fine-pruning (--defense fp)";
        anp: AnpConfig, "ANP (--defense anp)";
        nc: NeuralCleanseConfig, "Neural Cleanse (--defense nc)";
        agnostic: AgnosticConfig, "Input-agnostic reversal (--defense agnostic)";
        warp: WarpConfig, "Warp reversal, unlearnt beside the mask on a classifier (--defense drmguard, agnostic)";
        blend: BlendConfig, "Blend reversal, unlearnt beside the mask on a classifier (--defense drmguard, agnostic)";
        warp_collapse: WarpCollapseConfig, "Warp collapse, unlearnt beside the mask on a regression model when its test flags (--defense drmguard)";
    }
    kinds {
        /// DRMGuard: reverse-engineer a trigger (the calibrated verdict's, or with
        /// `--drmguard-test generator` the generator's), then unlearn it (fine-tune on reversed
        /// images with their true labels); on a classifier, the verdict's mask with the best
        /// class blend and warp beside it (`--blend`, `--warp`); on a regression model, with
        /// the warp collapse's warp beside it when its test flags (`--drmguard-warp`).
        Drmguard reads [drmguard, unlearn, warp, blend, warp_collapse],
            checks |c| if c.drmguard.test == DrmGuardTest::Verdict { c.agnostic.validate() } else { Ok(()) }
                .and_then(|()| c.unlearn.validate())
                .and_then(|()| c.warp.validate())
                .and_then(|()| c.warp_collapse.validate()),
            builds |c| DrmGuardRepair {
                drmguard: c.drmguard.clone(),
                verdict: c.agnostic.clone(),
                unlearn: c.unlearn.clone(),
                warp: c.warp.clone(),
                blend: c.blend.clone(),
                warp_collapse: c.warp_collapse.clone(),
            };
        /// Fine-tuning on the clean set (the reference).
        Ft reads [ft], checks |_c| Ok(()), builds |c| FineTuning { config: c.ft.clone() };
        /// Fine-pruning: prune dormant last-layer channels, then fine-tune.
        Fp reads [fp, ft], checks |_c| Ok(()), builds |c| FinePruning { config: c.fp.clone(), fine_tuning: c.ft.clone() };
        /// Adversarial neuron pruning over every BatchNorm channel.
        Anp reads [anp], checks |c| c.anp.validate(), builds |c| Anp { config: c.anp.clone() };
        /// Neural Cleanse unlearning with its reversed trigger.
        Nc reads [nc, unlearn], checks |c| c.nc.validate().and_then(|()| c.unlearn.validate()),
            builds |c| NcUnlearning { defense: "nc", nc: c.nc.clone(), class_nc: None, unlearn: c.unlearn.clone(), shapes: Shapes::default() };
        /// Unlearning the input-agnostic reversal's trigger: the search of `scan --defense
        /// agnostic` (against the reference models), then Neural Cleanse's unlearning; on a
        /// classifier, with the best class blend and warp beside the mask (`--blend`, `--warp`).
        Agnostic reads [agnostic, unlearn, warp, blend], checks |c| c.agnostic.validate().and_then(|()| c.unlearn.validate()).and_then(|()| c.warp.validate()),
            builds |c| NcUnlearning { defense: "agnostic", nc: c.agnostic.search(), class_nc: Some(c.agnostic.class_search()), unlearn: c.unlearn.clone(), shapes: Shapes::both(&c.blend, &c.warp) };
    }
}

impl DetectorKind {
    /// Whether the detector scans models of `task`. Every detector scans regression models;
    /// of the classifiers' detectors, each has its classification objective.
    pub fn handles(self, task: Task) -> bool {
        !task.is_classification() || CLASSIFIER_DETECTORS.contains(&self)
    }
}

/// The detectors with a classification objective.
const CLASSIFIER_DETECTORS: &[DetectorKind] = &[DetectorKind::Drmguard, DetectorKind::Nc, DetectorKind::Agnostic];

impl MitigatorKind {
    /// Whether the mitigator repairs models of `task`. Every mitigator repairs regression models;
    /// a classifier is repaired by fine-tuning and fine-pruning (they train with the task's loss)
    /// and by unlearning the trigger of a detector that scans classifiers. ANP's pruning search
    /// reads regression errors.
    pub fn handles(self, task: Task) -> bool {
        !task.is_classification() || CLASSIFIER_MITIGATORS.contains(&self)
    }
}

/// The mitigators that repair classifiers.
const CLASSIFIER_MITIGATORS: &[MitigatorKind] = &[MitigatorKind::Drmguard, MitigatorKind::Ft, MitigatorKind::Fp, MitigatorKind::Nc, MitigatorKind::Agnostic];

impl DetectorConfigs {
    /// The settings detector `kind`'s measurements read, and only those (for cache keys): its
    /// own config, and for DRMGuard's calibrated verdict the input-agnostic reversal's too. The
    /// input-agnostic reversal's verdict settings stand at fixed values
    /// ([`AgnosticConfig::keyed`]): a cached scan is re-decided under the current ones
    /// ([`AgnosticConfig::decide`]).
    pub fn settings_of(&self, kind: DetectorKind) -> serde_json::Value {
        match kind {
            DetectorKind::Drmguard if self.drmguard.test == DrmGuardTest::Verdict => {
                let mut keyed = serde_json::json!({ "drmguard": self.own_settings(kind), "agnostic": self.agnostic.keyed() });
                if self.drmguard.warp_signal {
                    keyed["warp"] = serde_json::json!(self.warp.keyed());
                }
                keyed
            }
            DetectorKind::Agnostic => serde_json::json!(self.agnostic.keyed()),
            DetectorKind::Warp => serde_json::json!(self.warp.keyed()),
            _ => self.own_settings(kind),
        }
    }

    /// Applies `DETECTOR.FIELD=VALUE` (e.g. `agnostic.restart_targets=exclude`): the field as
    /// `config.json` names it (hyphens read as underscores), the value as JSON (a number, a
    /// boolean) or else as a string. The bench's way to run a profile with one setting changed;
    /// the result is checked by each detector's own validation when it runs.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let bad = |why: String| Error::invalid("detector setting", format!("'{assignment}': {why}"));
        let (path, value) = assignment.split_once('=').ok_or_else(|| bad("expected DETECTOR.FIELD=VALUE".into()))?;
        let (detector, field) = path.trim().split_once('.').ok_or_else(|| bad("expected DETECTOR.FIELD=VALUE".into()))?;
        let (detector, field) = (detector.replace('-', "_"), field.replace('-', "_"));
        let mut all = serde_json::to_value(&*self).map_err(|e| Error::Numerical(e.to_string()))?;
        let names: Vec<String> = all.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let config = all.get_mut(&detector).and_then(|c| c.as_object_mut()).ok_or_else(|| bad(format!("no detector '{detector}' (one of: {})", names.join(", "))))?;
        if !config.contains_key(&field) && !Self::knows(&all, &detector, &field) {
            let config = &all[&detector];
            let fields: Vec<&str> = config.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            return Err(bad(format!("'{detector}' has no setting '{field}' (its settings include: {})", fields.join(", "))));
        }
        let value = value.trim();
        let parsed = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        all[&detector][&field] = parsed;
        *self = serde_json::from_value(all).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// Whether the config of `detector` has the setting `field`, which its JSON `all` leaves out
    /// at its default: a value of no setting's type (an object) fails to parse there, where an
    /// unknown field is ignored.
    fn knows(all: &serde_json::Value, detector: &str, field: &str) -> bool {
        let mut probe = all.clone();
        probe[detector][field] = serde_json::json!({ "": [] });
        serde_json::from_value::<DetectorConfigs>(probe).is_err()
    }
}

impl MitigatorConfigs {
    /// The settings mitigator `kind` reads, and only those (e.g. for cache keys): the configs
    /// its registry line names, and for DRMGuard's calibrated verdict the input-agnostic
    /// reversal's search settings too (a repair unlearns what the search found, whatever the
    /// verdict).
    pub fn settings_of(&self, kind: MitigatorKind) -> serde_json::Value {
        let own = self.own_settings(kind);
        match kind {
            MitigatorKind::Drmguard if self.drmguard.test == DrmGuardTest::Verdict => serde_json::json!({ "drmguard": own, "agnostic": self.agnostic.keyed() }),
            // The generator's edit is unlearnt alone: the blend and warp settings do not key it.
            MitigatorKind::Drmguard => serde_json::json!([self.drmguard, self.unlearn]),
            _ => own,
        }
    }
}

macro_rules! kebab_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let v = clap::ValueEnum::to_possible_value(self).expect("no skipped variants");
                f.write_str(v.get_name())
            }
        }
    )*};
}
kebab_display!(DetectorKind, MitigatorKind);

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{DetectorConfigs, MitigatorConfigs};

    #[derive(Parser)]
    struct Detectors {
        #[command(flatten)]
        configs: DetectorConfigs,
    }

    #[derive(Parser)]
    struct Mitigators {
        #[command(flatten)]
        configs: MitigatorConfigs,
    }

    #[test]
    fn settings_change_one_field_by_name_and_refuse_unknown_ones() {
        use crate::defenses::neural_cleanse::RestartTargets;
        let mut c = DetectorConfigs::default();
        c.set("agnostic.restart-targets=exclude").unwrap();
        c.set("agnostic.steps=50").unwrap();
        // A field left out of the JSON at its default (NC's smoothness 0).
        c.set("nc.smoothness=2.5").unwrap();
        assert_eq!(c.agnostic.restart_targets, RestartTargets::Exclude);
        assert_eq!(c.agnostic.steps, 50);
        assert_eq!(c.nc.smoothness, 2.5);
        assert_eq!(c.drmguard, DetectorConfigs::default().drmguard);
        for bad in ["agnostic.steps", "steps=3", "nothing.steps=3", "agnostic.no_such_field=1", "agnostic.steps=many"] {
            let before = c.clone();
            assert!(c.set(bad).is_err(), "{bad}");
            assert_eq!(c, before, "{bad} changed the settings");
        }
    }

    #[test]
    fn a_repairs_key_sees_the_learning_rate_its_task_resolves_to() {
        use super::MitigatorKind;
        use crate::task::Task;
        let c = MitigatorConfigs::default();
        let (fashion, gaze) = (c.for_task(Task::FASHION), c.for_task(Task::Gaze));
        assert_ne!(fashion.settings_of(MitigatorKind::Agnostic), gaze.settings_of(MitigatorKind::Agnostic));
        assert_eq!(fashion.settings_of(MitigatorKind::Ft), gaze.settings_of(MitigatorKind::Ft));
        let chosen = MitigatorConfigs { unlearn: crate::defenses::UnlearnConfig { learning_rate: Some(5e-5), ..Default::default() }, ..Default::default() };
        assert_eq!(chosen.for_task(Task::FASHION), chosen, "a rate the user chose stays");
    }

    #[test]
    fn drmguards_verdict_reads_and_keys_the_agnostic_settings_and_its_generator_test_does_not() {
        use crate::defenses::{DetectorKind, DrmGuardTest, MitigatorKind};
        let mut c = DetectorConfigs::default();
        assert_eq!(c.drmguard.test, DrmGuardTest::Verdict);
        assert_eq!(c.build(DetectorKind::Drmguard).name(), "drmguard");
        let verdict = c.settings_of(DetectorKind::Drmguard);
        assert_eq!(verdict["agnostic"], serde_json::json!(c.agnostic.keyed()));
        c.set("agnostic.steps=20").unwrap();
        assert_ne!(c.settings_of(DetectorKind::Drmguard), verdict, "a search setting rescans");
        let searched = c.settings_of(DetectorKind::Drmguard);
        c.set("agnostic.ratio=2.0").unwrap();
        c.set("agnostic.quality_slope=0.5").unwrap();
        assert_eq!(c.settings_of(DetectorKind::Drmguard), searched, "the verdict's settings re-decide a cached scan");
        assert_eq!(c.settings_of(DetectorKind::Agnostic), serde_json::json!(c.agnostic.keyed()));
        c.set("drmguard.test=generator").unwrap();
        // The generator test hashes as configs from before the switch did.
        assert_eq!(c.settings_of(DetectorKind::Drmguard), serde_json::json!(c.drmguard));
        assert!(c.settings_of(DetectorKind::Drmguard).get("test").is_none());
        let mut m = MitigatorConfigs::default();
        assert!(m.settings_of(MitigatorKind::Drmguard).get("agnostic").is_some());
        m.drmguard.test = DrmGuardTest::Generator;
        assert_eq!(m.settings_of(MitigatorKind::Drmguard), serde_json::json!([m.drmguard, m.unlearn]));
    }

    /// The command line and the library (the bench, the demo) read the same settings: `Default`
    /// comes from the `#[arg]` attributes (`settings::defaults`), also under the nesting that
    /// `scan` and `mitigate` flatten the configs into.
    #[test]
    fn no_flags_parse_to_every_configs_default() {
        assert_eq!(Detectors::parse_from(["scan"]).configs, DetectorConfigs::default());
        assert_eq!(Mitigators::parse_from(["mitigate"]).configs, MitigatorConfigs::default());
    }
}
