//! Conversions between the wire messages and the runner types of `addon-runner-api`. Everything that
//! comes off the wire is checked: a malformed message is an error naming the field, never a panic.

use std::path::PathBuf;

use addon_descriptors::{Descriptor, Section};
use addon_runner_api::{
    AddonRef, Artifact, ArtifactData, BuildSpec, Capabilities, Destination, Egress, Exit, ExitKind, Limits, Network,
    RunDirs, RunnerError, RunnerInfo, SandboxKind, StartSpec, Usage,
};

use crate::pb;

/// A message from the other side that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {field}: {message}")]
pub struct Malformed {
    pub field: String,
    pub message: String,
}

fn malformed(field: &str, message: impl Into<String>) -> Malformed {
    Malformed { field: field.to_string(), message: message.into() }
}

/// The same fields, one by one, from one capabilities type into the other (written once, so
/// that a capability added to both is carried both ways or neither).
macro_rules! same_capabilities {
    ($c:expr => $($to:ident)::+) => {
        $($to)::+ {
            isolates_network: $c.isolates_network,
            isolates_filesystem: $c.isolates_filesystem,
            builds: $c.builds,
            needs_daemon: $c.needs_daemon,
            uses_sandbox: $c.uses_sandbox,
            shares_host_filesystem: $c.shares_host_filesystem,
            enforces_limits: $c.enforces_limits,
            measures_resources: $c.measures_resources,
            host_root: $c.host_root,
            ptrace_children: $c.ptrace_children,
            egress: $c.egress,
        }
    };
}

pub fn capabilities_to_pb(c: &Capabilities) -> pb::Capabilities {
    same_capabilities!(c => pb::Capabilities)
}

pub fn capabilities_from_pb(c: &pb::Capabilities) -> Capabilities {
    same_capabilities!(c => Capabilities)
}

pub fn info_to_pb(info: &RunnerInfo) -> pb::InfoResponse {
    pb::InfoResponse {
        name: info.name.clone(),
        version: info.version.clone(),
        protocol_version: crate::PROTOCOL_VERSION,
        serves: info.serves.iter().map(|s| s.as_str().to_string()).collect(),
        capabilities: Some(capabilities_to_pb(&info.capabilities)),
    }
}

pub fn sections_from_pb(field: &str, serves: &[String]) -> Result<Vec<Section>, Malformed> {
    serves
        .iter()
        .map(|s| {
            Section::parse(s)
                .ok_or_else(|| malformed(field, format!("unknown descriptor section `{s}` (docker, nix, trivial)")))
        })
        .collect()
}

pub fn info_from_pb(info: &pb::InfoResponse) -> Result<RunnerInfo, Malformed> {
    Ok(RunnerInfo {
        name: info.name.clone(),
        version: info.version.clone(),
        serves: sections_from_pb("Info.serves", &info.serves)?,
        capabilities: info.capabilities.as_ref().map(capabilities_from_pb).unwrap_or_default(),
    })
}

fn addon_to_pb(a: &AddonRef) -> pb::AddonRef {
    pb::AddonRef { name: a.name.clone(), version: a.version.clone(), digest: a.digest.clone() }
}

fn addon_from_pb(field: &str, a: Option<&pb::AddonRef>) -> Result<AddonRef, Malformed> {
    let a = a.ok_or_else(|| malformed(field, "missing"))?;
    Ok(AddonRef { name: a.name.clone(), version: a.version.clone(), digest: a.digest.clone() })
}

fn section_from_pb(field: &str, s: &str) -> Result<Section, Malformed> {
    Section::parse(s).ok_or_else(|| malformed(field, format!("unknown descriptor section `{s}`")))
}

fn descriptor_to_json(d: &Descriptor) -> String {
    serde_json::to_string(d).unwrap_or_else(|_| "null".into())
}

fn descriptor_from_json(field: &str, s: &str) -> Result<Descriptor, Malformed> {
    serde_json::from_str(s).map_err(|e| malformed(field, e.to_string()))
}

pub fn build_spec_to_pb(spec: &BuildSpec, build_id: &str) -> pb::BuildSpec {
    pb::BuildSpec {
        addon: Some(addon_to_pb(&spec.addon)),
        section: spec.section.as_str().to_string(),
        descriptor_json: descriptor_to_json(&spec.descriptor),
        addon_dir: spec.addon_dir.display().to_string(),
        content_dir: spec.content_dir.display().to_string(),
        build_id: build_id.to_string(),
    }
}

pub fn build_spec_from_pb(spec: &pb::BuildSpec) -> Result<BuildSpec, Malformed> {
    Ok(BuildSpec {
        addon: addon_from_pb("BuildSpec.addon", spec.addon.as_ref())?,
        section: section_from_pb("BuildSpec.section", &spec.section)?,
        descriptor: descriptor_from_json("BuildSpec.descriptor_json", &spec.descriptor_json)?,
        addon_dir: PathBuf::from(&spec.addon_dir),
        content_dir: PathBuf::from(&spec.content_dir),
    })
}

pub fn artifact_to_pb(a: &Artifact) -> pb::Artifact {
    pb::Artifact { reference: a.reference.clone(), size: a.size, data_json: a.data.to_json() }
}

pub fn artifact_from_pb(a: &pb::Artifact) -> Result<Artifact, Malformed> {
    let data = ArtifactData::from_json(&a.data_json).map_err(|e| malformed("Artifact.data_json", e.to_string()))?;
    Ok(Artifact { reference: a.reference.clone(), size: a.size, data })
}

fn limits_to_pb(l: &Limits) -> pb::Limits {
    pb::Limits {
        memory: l.memory.unwrap_or(0),
        pids: l.pids.unwrap_or(0),
        cpus: l.cpus.unwrap_or(0.0),
        output_size: l.output_size.unwrap_or(0),
        output_entries: l.output_entries.unwrap_or(0),
    }
}

fn limits_from_pb(l: Option<&pb::Limits>) -> Limits {
    let l = l.cloned().unwrap_or_default();
    let some = |v: u64| (v > 0).then_some(v);
    Limits {
        memory: some(l.memory),
        pids: some(l.pids),
        cpus: (l.cpus > 0.0 && l.cpus.is_finite()).then_some(l.cpus),
        output_size: some(l.output_size),
        output_entries: some(l.output_entries),
    }
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

pub fn dirs_to_pb(d: &RunDirs) -> pb::RunDirs {
    pb::RunDirs {
        work: path(&d.work),
        addon: path(&d.addon),
        output: path(&d.output),
        cache: path(&d.cache),
        home: path(&d.home),
        scratch: path(&d.scratch),
    }
}

pub fn dirs_from_pb(d: Option<&pb::RunDirs>) -> Result<RunDirs, Malformed> {
    let d = d.ok_or_else(|| malformed("StartSpec.dirs", "missing"))?;
    let p = |field: &str, s: &str| -> Result<PathBuf, Malformed> {
        if s.is_empty() {
            return Err(malformed(&format!("StartSpec.dirs.{field}"), "empty"));
        }
        Ok(PathBuf::from(s))
    };
    Ok(RunDirs {
        work: p("work", &d.work)?,
        addon: p("addon", &d.addon)?,
        output: p("output", &d.output)?,
        cache: p("cache", &d.cache)?,
        home: p("home", &d.home)?,
        scratch: p("scratch", &d.scratch)?,
    })
}

pub fn start_spec_to_pb(spec: &StartSpec) -> pb::StartSpec {
    pb::StartSpec {
        run_id: spec.run_id.clone(),
        addon: Some(addon_to_pb(&spec.addon)),
        section: spec.section.as_str().to_string(),
        descriptor_json: descriptor_to_json(&spec.descriptor),
        artifact: spec.artifact.as_ref().map(artifact_to_pb),
        artifact_dir: spec.artifact_dir.as_deref().map(path).unwrap_or_default(),
        args: spec.args.clone(),
        env: spec.env.iter().map(|(name, value)| pb::EnvVar { name: name.clone(), value: value.clone() }).collect(),
        dirs: Some(dirs_to_pb(&spec.dirs)),
        network: spec.network.any(),
        limits: Some(limits_to_pb(&spec.limits)),
        sandbox: spec.sandbox.map(|s| s.as_str().to_string()).unwrap_or_default(),
        egress: match &spec.network {
            Network::Egress(e) => Some(pb::EgressPolicy {
                allow: e.allow.iter().map(|d| d.to_pb()).collect(),
                resolvers: e.resolvers.iter().map(|r| r.to_string()).collect(),
            }),
            _ => None,
        },
    }
}

pub fn start_spec_from_pb(spec: &pb::StartSpec) -> Result<StartSpec, Malformed> {
    if spec.run_id.is_empty() {
        return Err(malformed("StartSpec.run_id", "empty"));
    }
    let sandbox = match spec.sandbox.as_str() {
        "" => None,
        s => Some(
            SandboxKind::ALL
                .into_iter()
                .find(|k| k.as_str() == s)
                .ok_or_else(|| malformed("StartSpec.sandbox", format!("unknown sandbox `{s}`")))?,
        ),
    };
    Ok(StartSpec {
        run_id: spec.run_id.clone(),
        addon: addon_from_pb("StartSpec.addon", spec.addon.as_ref())?,
        section: section_from_pb("StartSpec.section", &spec.section)?,
        descriptor: descriptor_from_json("StartSpec.descriptor_json", &spec.descriptor_json)?,
        artifact: spec.artifact.as_ref().map(artifact_from_pb).transpose()?,
        artifact_dir: (!spec.artifact_dir.is_empty()).then(|| PathBuf::from(&spec.artifact_dir)),
        args: spec.args.clone(),
        env: spec.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
        dirs: dirs_from_pb(spec.dirs.as_ref())?,
        network: match (spec.network, &spec.egress) {
            (false, _) => Network::None,
            (true, None) => Network::Host,
            (true, Some(e)) => Network::Egress(Egress {
                allow: e
                    .allow
                    .iter()
                    .map(|d| {
                        Destination::from_pb(d).ok_or_else(|| {
                            malformed(
                                "StartSpec.egress.allow",
                                format!("`{d}` is not ADDR/PREFIX:PORT or ADDR/PREFIX:*"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                resolvers: e
                    .resolvers
                    .iter()
                    .map(|r| {
                        r.parse()
                            .map_err(|_| malformed("StartSpec.egress.resolvers", format!("`{r}` is not ADDR:PORT")))
                    })
                    .collect::<Result<_, _>>()?,
            }),
        },
        limits: limits_from_pb(spec.limits.as_ref()),
        sandbox,
    })
}

pub fn exit_to_pb(exit: &Exit) -> pb::Exit {
    pb::Exit {
        kind: Some(match &exit.kind {
            ExitKind::Code(c) => pb::exit::Kind::Code(*c),
            ExitKind::Limit(why) => pb::exit::Kind::Limit(why.clone()),
        }),
        usage: Some(pb::Usage {
            peak_memory_bytes: exit.usage.peak_memory_bytes,
            cpu_ms: exit.usage.cpu_ms,
            oom_kills: exit.usage.oom_kills,
            pids_refused: exit.usage.pids_refused,
            network_refused: exit.usage.network_refused,
            dns_queries: exit.usage.dns_queries,
        }),
    }
}

pub fn exit_from_pb(exit: &pb::Exit) -> Result<Exit, Malformed> {
    let kind = match &exit.kind {
        Some(pb::exit::Kind::Code(c)) => ExitKind::Code(*c),
        Some(pb::exit::Kind::Limit(why)) => ExitKind::Limit(why.clone()),
        None => return Err(malformed("Exit.kind", "missing")),
    };
    let u = exit.usage.unwrap_or_default();
    Ok(Exit {
        kind,
        usage: Usage {
            peak_memory_bytes: u.peak_memory_bytes,
            cpu_ms: u.cpu_ms,
            oom_kills: u.oom_kills,
            pids_refused: u.pids_refused,
            network_refused: u.network_refused,
            dns_queries: u.dns_queries,
        },
    })
}

/// A runner error for the wire (the runner's name is the engine's to add).
pub fn error_to_pb(e: &RunnerError) -> pb::RunnerError {
    use pb::runner_error::Kind;
    let (kind, message, log_tail, program) = match e {
        RunnerError::Unavailable { detail, .. } => (Kind::Unavailable, detail.clone(), vec![], String::new()),
        RunnerError::Sandbox { detail, .. } => (Kind::Sandbox, detail.clone(), vec![], String::new()),
        RunnerError::Build { message, log_tail, .. } => (Kind::Build, message.clone(), log_tail.clone(), String::new()),
        RunnerError::Spawn { program, detail, .. } => (Kind::Spawn, detail.clone(), vec![], program.clone()),
        RunnerError::Setup { message, .. } | RunnerError::Runner { message, .. } => {
            (Kind::Setup, message.clone(), vec![], String::new())
        }
    };
    pb::RunnerError { kind: kind as i32, message, log_tail, program }
}

/// A runner error from the wire, under the engine's name for the plugin.
pub fn error_from_pb(runner: &str, addon: &str, e: &pb::RunnerError) -> RunnerError {
    use pb::runner_error::Kind;
    let runner = runner.to_string();
    match Kind::try_from(e.kind).unwrap_or(Kind::Unspecified) {
        Kind::Unavailable => RunnerError::Unavailable { runner, detail: e.message.clone() },
        Kind::Sandbox => RunnerError::Sandbox { runner, detail: e.message.clone() },
        Kind::Build => RunnerError::Build {
            runner,
            addon: addon.to_string(),
            message: e.message.clone(),
            log_tail: e.log_tail.clone(),
        },
        Kind::Spawn => RunnerError::Spawn { runner, program: e.program.clone(), detail: e.message.clone() },
        Kind::Setup | Kind::Unspecified => RunnerError::Setup { runner, message: e.message.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> Descriptor {
        let text = "meta: {name: a, version: \"1\"}\nrunner: {trivial: {enable: true, exec: run.sh}}\n";
        addon_descriptors::parse_descriptor(text, None).descriptor.unwrap()
    }

    #[test]
    fn a_start_spec_survives_the_wire() {
        let spec = StartSpec {
            run_id: "r1".into(),
            addon: AddonRef { name: "a".into(), version: "1".into(), digest: "sha256:00".into() },
            section: Section::Trivial,
            descriptor: descriptor(),
            artifact: Some(Artifact {
                reference: "img".into(),
                size: 3,
                data: ArtifactData::of(&serde_json::json!({"k": 1})).unwrap(),
            }),
            artifact_dir: Some("/c".into()),
            args: vec!["arguments/user-input".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            dirs: RunDirs {
                work: "/w".into(),
                addon: "/w/addons/a-1".into(),
                output: "/o".into(),
                cache: "/c".into(),
                home: "/h".into(),
                scratch: "/s".into(),
            },
            network: Network::Egress(Egress {
                allow: vec![
                    Destination { addr: "10.1.2.3".parse().unwrap(), prefix: 32, port: Some(7880) },
                    Destination { addr: "fd00::".parse().unwrap(), prefix: 8, port: None },
                ],
                resolvers: vec!["198.51.100.53:53".parse().unwrap()],
            }),
            limits: Limits {
                memory: Some(1 << 30),
                pids: Some(64),
                cpus: Some(0.5),
                output_size: None,
                output_entries: Some(1000),
            },
            sandbox: Some(SandboxKind::Bwrap),
        };
        let back = start_spec_from_pb(&start_spec_to_pb(&spec)).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&spec).unwrap());
    }

    #[test]
    fn malformed_messages_name_the_field() {
        let mut pb = start_spec_to_pb(&StartSpec {
            run_id: "r".into(),
            addon: AddonRef { name: "a".into(), version: "1".into(), digest: String::new() },
            section: Section::Docker,
            descriptor: descriptor(),
            artifact: None,
            artifact_dir: None,
            args: vec![],
            env: vec![],
            dirs: RunDirs {
                work: "/w".into(),
                addon: "/w/a".into(),
                output: "/o".into(),
                cache: "/c".into(),
                home: "/h".into(),
                scratch: "/s".into(),
            },
            network: Network::Host,
            limits: Limits::default(),
            sandbox: None,
        });
        pb.section = "kubernetes".into();
        assert_eq!(start_spec_from_pb(&pb).unwrap_err().field, "StartSpec.section");
        pb.section = "docker".into();
        pb.descriptor_json = "{".into();
        assert_eq!(start_spec_from_pb(&pb).unwrap_err().field, "StartSpec.descriptor_json");
        let exit = pb::Exit { kind: None, usage: None };
        assert_eq!(exit_from_pb(&exit).unwrap_err().field, "Exit.kind");
    }

    #[test]
    fn errors_keep_their_kind() {
        let e = addon_runner_api::BuildFailed::with_log("it broke", vec!["line 1".into(), "line 2".into()])
            .into_error("x", "a-1");
        let back = error_from_pb("plug", "a-1", &error_to_pb(&e));
        assert_eq!(
            back,
            RunnerError::Build {
                runner: "plug".into(),
                addon: "a-1".into(),
                message: "it broke".into(),
                log_tail: vec!["line 1".into(), "line 2".into()]
            }
        );
    }
}
