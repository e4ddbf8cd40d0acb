//! `runner` of orchestrator.config.json: where an iteration's process runs. `local` (the
//! default) starts it on this host; `slurm` makes each iteration one Slurm job, with these
//! resources asked of the cluster.

use serde::Deserialize;

/// `runner` as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Option<RawRunner>")]
pub enum RunnerConfig {
    #[default]
    Local,
    Slurm(SlurmConfig),
}

/// What each iteration's Slurm job asks for; `None`: the cluster's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    /// The job's time limit; by default the iteration timeout plus the stop grace, rounded up.
    pub time_limit_mins: Option<u64>,
    pub cpus: Option<u64>,
    pub mem_mb: Option<u64>,
    /// More `srun` options, given before the worker's command.
    pub extra_args: Vec<String>,
}

/// `runner` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRunner {
    kind: Option<String>,
    partition: Option<String>,
    time_limit_mins: Option<u64>,
    cpus: Option<u64>,
    mem_mb: Option<u64>,
    extra_args: Option<Vec<String>>,
}

/// srun options sticler sets itself: the job's name and comment are how sticler finds its
/// jobs again after a crash, the folder is the story's.
const OWN_OPTIONS: &[&str] = &["--job-name", "-J", "--comment", "--chdir", "-D"];

impl TryFrom<Option<RawRunner>> for RunnerConfig {
    type Error = String;

    /// `null` is the default, as for every section.
    fn try_from(raw: Option<RawRunner>) -> Result<Self, String> {
        let Some(raw) = raw else { return Ok(RunnerConfig::Local) };
        match raw.kind.as_deref() {
            Some("local") => {
                let given = [
                    ("partition", raw.partition.is_some()),
                    ("time_limit_mins", raw.time_limit_mins.is_some()),
                    ("cpus", raw.cpus.is_some()),
                    ("mem_mb", raw.mem_mb.is_some()),
                    ("extra_args", raw.extra_args.is_some()),
                ];
                match given.iter().find(|(_, given)| *given) {
                    Some((key, _)) => Err(format!("runner.{key} applies to \"kind\": \"slurm\" only")),
                    None => Ok(RunnerConfig::Local),
                }
            }
            Some("slurm") => {
                for (key, value) in
                    [("time_limit_mins", raw.time_limit_mins), ("cpus", raw.cpus), ("mem_mb", raw.mem_mb)]
                {
                    if value == Some(0) {
                        return Err(format!("runner.{key} must be at least 1"));
                    }
                }
                let extra_args = raw.extra_args.unwrap_or_default();
                let own = extra_args.iter().find(|arg| OWN_OPTIONS.iter().any(|o| arg.split('=').next() == Some(*o)));
                if let Some(arg) = own {
                    return Err(format!("runner.extra_args may not hold {arg:?}: sticler sets it for each job"));
                }
                Ok(RunnerConfig::Slurm(SlurmConfig {
                    partition: raw.partition,
                    time_limit_mins: raw.time_limit_mins,
                    cpus: raw.cpus,
                    mem_mb: raw.mem_mb,
                    extra_args,
                }))
            }
            Some(other) => Err(format!("runner.kind must be \"local\" or \"slurm\", not {other:?}")),
            None => Err("runner.kind is missing; write \"kind\": \"local\" or \"kind\": \"slurm\"".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RunnerConfig, String> {
        serde_json::from_str::<RunnerConfig>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn local_and_slurm_are_read_with_their_settings() {
        assert_eq!(parse(r#"{"kind": "local"}"#), Ok(RunnerConfig::Local));
        assert_eq!(parse("null"), Ok(RunnerConfig::Local));
        let slurm = parse(
            r#"{"kind": "slurm", "partition": "gpu", "time_limit_mins": 30, "cpus": 4, "mem_mb": 8000,
                "extra_args": ["--qos=low"]}"#,
        );
        let expected = SlurmConfig {
            partition: Some("gpu".into()),
            time_limit_mins: Some(30),
            cpus: Some(4),
            mem_mb: Some(8000),
            extra_args: vec!["--qos=low".into()],
        };
        assert_eq!(slurm, Ok(RunnerConfig::Slurm(expected)));
        assert_eq!(parse(r#"{"kind": "slurm"}"#), Ok(RunnerConfig::Slurm(SlurmConfig::default())));
    }

    #[test]
    fn settings_that_cannot_be_meant_are_refused_by_name() {
        for (json, says) in [
            (r#"{}"#, "runner.kind is missing"),
            (r#"{"kind": "k8s"}"#, "runner.kind must be \"local\" or \"slurm\", not \"k8s\""),
            (r#"{"kind": "local", "partition": "debug"}"#, "runner.partition applies to \"kind\": \"slurm\" only"),
            (r#"{"kind": "slurm", "cpus": 0}"#, "runner.cpus must be at least 1"),
            (r#"{"kind": "slurm", "extra_args": ["--job-name=x"]}"#, "may not hold \"--job-name=x\""),
            (r#"{"kind": "slurm", "extra_args": ["-J", "x"]}"#, "may not hold \"-J\""),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }
}
