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
