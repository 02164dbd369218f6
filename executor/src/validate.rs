//! `addon validate`: the report for one source.

use addon_descriptors::{Diagnostic, LoadedAddon, Trigger};
use serde::Serialize;

use crate::source::OpenError;

/// One line of `addon validate --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub source: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub meta: Option<MetaReport>,
    pub triggers: Vec<Trigger>,
    /// The built-in runners of the sections the addon enables (`docker`, `nix-flake`, `trivial`).
    pub runners: Vec<&'static str>,
    pub networking: bool,
    pub collect_output: bool,
    pub pure: bool,
    pub diagnostics: Vec<Diagnostic>,
    /// The descriptor file that was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<String>,
    /// Why the source could not be read or was refused before validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// True when the source could not be read at all (exit code 2).
    #[serde(skip)]
    pub unreadable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetaReport {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
}

impl ValidationReport {
    pub fn from_addon(source: &str, addon: &LoadedAddon) -> Self {
        let d = addon.parsed.descriptor.as_ref();
        ValidationReport {
            source: source.to_string(),
            valid: addon.parsed.is_valid(),
            digest: Some(addon.digest.to_string()),
            meta: d.map(|d| MetaReport {
                name: d.meta.name.clone(),
                version: d.meta.version.clone(),
                description: d.meta.description.clone(),
            }),
            triggers: d.map(|d| d.triggers.clone()).unwrap_or_default(),
            runners: d.map(|d| d.sections().into_iter().map(|s| s.builtin_runner()).collect()).unwrap_or_default(),
            networking: d.is_some_and(|d| d.networking()),
            collect_output: d.is_none_or(|d| d.collect_output()),
            pure: d.is_some_and(|d| d.pure()),
            diagnostics: addon.parsed.diagnostics.clone(),
            descriptor: Some(addon.descriptor_path.display().to_string()),
            error: None,
            unreadable: false,
        }
    }

    pub fn from_error(source: &str, err: &OpenError) -> Self {
        let message = err.to_string();
        ValidationReport {
            source: source.to_string(),
            valid: false,
            digest: None,
            meta: None,
            triggers: Vec::new(),
            runners: Vec::new(),
            networking: false,
            collect_output: true,
            pure: false,
            diagnostics: vec![Diagnostic::error(None, message.clone(), None)],
            descriptor: None,
            error: Some(message),
            unreadable: !err.is_judgement(),
        }
    }
}

impl ValidationReport {
    /// Where nix is installed, reads the flake of an addon that enables the nix section and
    /// warns when `nix build` would find nothing to build in it (a flake without
    /// `packages.<system>.default` or `defaultPackage.<system>`). A flake that cannot be read
    /// here (inputs not in the store, offline) is not judged: the build will say.
    #[cfg(feature = "nix")]
    pub fn check_flake(&mut self, addon: &LoadedAddon, nix_binary: &str) {
        use addon_runners::nix::{flake_default, FlakeDefault};
        let (Some(d), Some(root)) = (addon.parsed.descriptor.as_ref(), addon.root.as_ref()) else { return };
        if !d.sections().contains(&addon_descriptors::Section::Nix) || !root.join("flake.nix").is_file() {
            return;
        }
        let Ok(nix) = which::which(nix_binary) else { return };
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let found = rt.block_on(flake_default(&nix.to_string_lossy(), root, std::time::Duration::from_secs(30)));
        if let FlakeDefault::Missing(why) = found {
            self.diagnostics.push(Diagnostic::warning(
                Some("runner.nix".into()),
                format!("the nix-flake runner cannot build this addon: {why}"),
                None,
            ));
        }
    }
}
