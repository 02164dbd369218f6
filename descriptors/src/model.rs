//! The Docspell addon descriptor (`docspell-addon.yml`) as typed data.
//!
//! These types are the schema (`addon schema descriptor`) and the result of validation. They are
//! never deserialised directly from user input: `parse` walks the YAML with positions so that every
//! problem can point at a line and column.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The names of the descriptor file, in the order Docspell looks for them.
pub const DESCRIPTOR_FILES: [&str; 3] = ["docspell-addon.json", "docspell-addon.yaml", "docspell-addon.yml"];

/// A Docspell addon descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "Docspell addon descriptor (docspell-addon.yml)")]
pub struct Descriptor {
    pub meta: Meta,
    /// When the addon may run. Empty or absent means all triggers.
    #[serde(default)]
    #[schemars(with = "Option<Vec<Trigger>>")] // `triggers:` with no value is accepted
    pub triggers: Vec<Trigger>,
    /// Arguments placed before the path of the user-input file.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")] // `args:` with no value is accepted (real addons have it)
    pub args: Vec<String>,
    /// How the addon is built and run. Absent sections are auto-detected (flake.nix, Dockerfile).
    #[serde(default)]
    #[schemars(with = "Option<RunnerSection>")]
    pub runner: RunnerSection,
    /// Absent: no network, output collected (the safe defaults).
    #[serde(default)]
    pub options: Option<Options>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Meta {
    /// Addon name: no whitespace, usable as a directory name.
    #[schemars(regex(pattern = r"^[^\s/\\]+$"))]
    pub name: String,
    /// Addon version: no whitespace. Quote it in YAML (`"1.0"`), a bare number is a float.
    #[schemars(regex(pattern = r"^[^\s/\\]+$"))]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An event in Docspell that may run the addon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    FinalProcessItem,
    FinalReprocessItem,
    Scheduled,
    ExistingItem,
}

impl Trigger {
    pub const ALL: [Trigger; 4] =
        [Trigger::FinalProcessItem, Trigger::FinalReprocessItem, Trigger::Scheduled, Trigger::ExistingItem];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::FinalProcessItem => "final-process-item",
            Trigger::FinalReprocessItem => "final-reprocess-item",
            Trigger::Scheduled => "scheduled",
            Trigger::ExistingItem => "existing-item",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nix: Option<NixRunner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerRunner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trivial: Option<TrivialRunner>,
}

/// Build with `nix build` from the addon's `flake.nix`, run the program in `result/bin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NixRunner {
    pub enable: bool,
}

/// Run in a Docker container: `image` if given, else built from the addon's Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DockerRunner {
    pub enable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Path of the Dockerfile inside the addon (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// Run `exec` (a file inside the addon) directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TrivialRunner {
    pub enable: bool,
    /// Path of the program inside the addon, relative to its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// false: the addon gets no network at all (only its own loopback).
    pub networking: bool,
    /// true: stdout is parsed as Docspell addon output.
    pub collect_output: bool,
}

/// A runner section of the descriptor (`runner.docker`, `runner.nix`, `runner.trivial`): a way
/// the addon says it can be run. Runners (built-in or plugins) name the sections they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    Docker,
    Nix,
    Trivial,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Docker, Section::Nix, Section::Trivial];

    /// The section's key in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Docker => "docker",
            Section::Nix => "nix",
            Section::Trivial => "trivial",
        }
    }

    /// The name of the built-in runner that serves this section.
    pub fn builtin_runner(self) -> &'static str {
        match self {
            Section::Docker => "docker",
            Section::Nix => "nix-flake",
            Section::Trivial => "trivial",
        }
    }

    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|k| k.as_str() == s.trim())
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Descriptor {
    /// `name-version`, the addon's directory name in a run.
    pub fn id(&self) -> String {
        format!("{}-{}", self.meta.name, self.meta.version)
    }

    /// The network is cut unless the options say otherwise (SPEC "Network and purity").
    pub fn networking(&self) -> bool {
        self.options.is_some_and(|o| o.networking)
    }

    /// Output is collected unless the options say otherwise.
    pub fn collect_output(&self) -> bool {
        self.options.is_none_or(|o| o.collect_output)
    }

    /// Pure: no network and the output is collected, so a failed run changed nothing and may be
    /// retried with another runner.
    pub fn pure(&self) -> bool {
        !self.networking() && self.collect_output()
    }

    /// The runner sections this addon enables (after auto-detection), in the fixed order
    /// docker, nix, trivial.
    pub fn sections(&self) -> Vec<Section> {
        let r = &self.runner;
        let mut out = Vec::new();
        if r.docker.as_ref().is_some_and(|d| d.enable) {
            out.push(Section::Docker);
        }
        if r.nix.as_ref().is_some_and(|n| n.enable) {
            out.push(Section::Nix);
        }
        if r.trivial.as_ref().is_some_and(|t| t.enable) {
            out.push(Section::Trivial);
        }
        out
    }

    pub fn enables(&self, section: Section) -> bool {
        self.sections().contains(&section)
    }

    /// The trivial runner's program, when that runner is enabled.
    pub fn trivial_exec(&self) -> Option<&str> {
        self.runner.trivial.as_ref().filter(|t| t.enable).and_then(|t| t.exec.as_deref())
    }

    /// The Dockerfile path inside the addon (default `Dockerfile`).
    pub fn dockerfile(&self) -> &str {
        self.runner.docker.as_ref().and_then(|d| d.build.as_deref()).unwrap_or("Dockerfile")
    }

    /// The docker image to run, when the descriptor names one (else it is built).
    pub fn docker_image(&self) -> Option<&str> {
        self.runner.docker.as_ref().and_then(|d| d.image.as_deref())
    }
}
