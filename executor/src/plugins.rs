//! Runner plugins from the configuration's `plugins:` block.

use crate::config::Config;
use crate::resolve::RunnerSlot;
use addon_descriptors::Section;

/// One slot per configured plugin.
pub fn slots(config: &Config) -> Vec<RunnerSlot> {
    config
        .plugins
        .iter()
        .map(|(name, p)| RunnerSlot {
            name: name.clone(),
            serves: p.serves.iter().filter_map(|s| Section::parse(s)).collect(),
            runner: None,
            builtin: false,
            missing: Some("plugins are not supported yet".into()),
        })
        .collect()
}
