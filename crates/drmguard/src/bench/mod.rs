//! The benchmark (`drmguard bench`): train benign and backdoored models per task and attack,
//! run every detector on every model and every mitigator on every backdoored model, and write
//! the paper's tables (identification counts, ROC-AUC, mitigation) with the time of every step.
//!
//! Everything is cached under one folder (trained models by their job's hash, each evaluation,
//! scan and mitigation by the hash of what determines it), so an interrupted run resumes where
//! it stopped and a rerun with more models or defenses only computes what is new.

pub mod plots;
mod profile;
mod records;
pub mod report;
mod runner;
pub mod scoring;
mod summaries;
pub mod verdict;
pub mod zoo;

pub use profile::*;
pub use records::*;
pub use runner::Bench;
use runner::cached;
use summaries::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defenses::{DetectorKind, MitigatorKind};
    use crate::task::Task;

    #[test]
    fn a_run_that_repairs_nothing_summarises_no_repairs() {
        let c = BenchConfig::new(BenchProfile::Smoke);
        assert!(!c.attacks.is_empty() && !c.mitigators.is_empty());
        assert!(summarise_mitigations(&c, &[], &[]).is_empty());
    }

    /// A cached scan or repair is keyed on the settings its defense reads: changing DRMGuard's
    /// must not throw away the other defenses' results (and must change DRMGuard's own key).
    #[test]
    fn cache_keys_follow_each_defense_own_settings() {
        let base = BenchConfig::new(BenchProfile::Small);
        let mut changed = base.clone();
        changed.detector_configs.drmguard.steps += 1;
        changed.mitigator_configs.drmguard.steps += 1;
        for kind in [DetectorKind::Nc, DetectorKind::Featurere, DetectorKind::Abs] {
            assert_eq!(base.detector_configs.settings_of(kind), changed.detector_configs.settings_of(kind), "{kind}");
        }
        for kind in [MitigatorKind::Ft, MitigatorKind::Fp, MitigatorKind::Anp, MitigatorKind::Nc] {
            assert_eq!(base.mitigator_configs.settings_of(kind), changed.mitigator_configs.settings_of(kind), "{kind}");
        }
        assert_ne!(base.detector_configs.settings_of(DetectorKind::Drmguard), changed.detector_configs.settings_of(DetectorKind::Drmguard));
        assert_ne!(base.mitigator_configs.settings_of(MitigatorKind::Drmguard), changed.mitigator_configs.settings_of(MitigatorKind::Drmguard));
        // Fine-pruning fine-tunes with the fine-tuning settings, so it reads them too.
        changed.mitigator_configs.ft.epochs += 1;
        assert_ne!(base.mitigator_configs.settings_of(MitigatorKind::Fp), changed.mitigator_configs.settings_of(MitigatorKind::Fp));
    }

    /// The settings each defense's cached results are keyed on, pinned: a refactor that changed
    /// them would silently throw away every cached scan and repair of the test bed.
    #[test]
    fn the_test_beds_cache_keys_stay_put() {
        let c = BenchConfig::new(BenchProfile::Small);
        let detectors: Vec<(String, String)> = DetectorKind::ALL.iter().map(|&k| (k.to_string(), crate::io::short_hash(&c.detector_configs.settings_of(k)))).collect();
        let mitigators: Vec<(String, String)> = [MitigatorKind::Drmguard, MitigatorKind::Ft, MitigatorKind::Fp, MitigatorKind::Anp, MitigatorKind::Nc]
            .iter()
            .map(|&k| (k.to_string(), crate::io::short_hash(&c.mitigator_configs.settings_of(k))))
            .collect();
        let pinned = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(detectors, pinned(&[("drmguard", "c07851c4b5c5fecd"), ("nc", "6e194b55888895e2"), ("featurere", "6336f2edc3f12e20"), ("abs", "a606d73d554d209c"), ("noise", "cc03a8408df06433"), ("agnostic", "7588562fd7fbfbf7"), ("warp", "b4b9a22fb27ca1bf")]));
        assert_eq!(mitigators, pinned(&[("drmguard", "1cedad5cee6207a1"), ("ft", "2327d72182d37a5e"), ("fp", "0ef0288a9cfd549d"), ("anp", "ebd313277cd24e75"), ("nc", "fccc64a5b6eb62cf")]));
    }

    #[test]
    fn the_test_beds_models_keep_their_cache_keys() {
        // Model 0 of each class, as the runner builds its training job: retraining the test bed
        // takes hours, so an attack's serialised form must not move.
        let c = BenchConfig::new(BenchProfile::Small);
        let key = |task: Task, attack: Option<&str>| c.train_job(task, attack, c.model_seed(attack, 0).unwrap()).unwrap().key();
        let keys: Vec<String> = [(Task::Gaze, None), (Task::Gaze, Some("badnets")), (Task::HeadPose, Some("blended")), (Task::Gaze, Some("wanet"))]
            .into_iter()
            .map(|(task, attack)| key(task, attack))
            .collect();
        assert_eq!(keys, ["03d7df9d90005bac", "7d2ada0b3f429441", "754b9e3fa52f45de", "b9f94d077cc5401e"]);
    }

    #[test]
    fn the_small_profile_repairs_one_model_per_attack() {
        let tiny = BenchConfig::new(BenchProfile::Tiny);
        assert_eq!((tiny.models_per_class, tiny.benign_per_class, tiny.mitigated_per_class), (5, 5, 1));
        let c = BenchConfig::new(BenchProfile::Small);
        assert_eq!((c.models_per_class, c.benign_per_class, c.mitigated_per_class), (4, 8, 1));
        let smoke = BenchConfig::new(BenchProfile::Smoke);
        assert_eq!(smoke.mitigated_per_class, smoke.models_per_class);
        // The repairs reuse the scans' DRMGuard reversal only when both have the same settings.
        assert_eq!(c.detector_configs.drmguard, c.mitigator_configs.drmguard);
    }

    #[test]
    fn a_run_from_a_later_model_must_leave_one_to_run() {
        let mut c = BenchConfig::new(BenchProfile::Small);
        c.first_model = c.benign_per_class - 1;
        assert!(c.validate().is_ok());
        c.first_model = c.benign_per_class;
        assert!(c.validate().unwrap_err().to_string().contains("first model"));
    }
}
