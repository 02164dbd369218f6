//! Components' own sections of the engine configuration.
//!
//! A runner or sandbox with settings defines one type for them ([`ComponentSettings`]: serde,
//! a JSON schema whose doc comments become the configuration reference, defaults, and the
//! checks serde cannot make) and names it in its registry entry with [`ConfigSection::of`]. The
//! engine reads every registered section from the configuration file, checks it, puts it in its
//! [`Sections`], and the component takes its settings back out with [`Sections::get`] when it
//! is made. The engine's own configuration knows none of these types.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One component's settings: the value of its section of the configuration.
pub trait ComponentSettings:
    Serialize + DeserializeOwned + JsonSchema + Default + Clone + fmt::Debug + Send + Sync + 'static
{
    /// Its key in the configuration (`docker-runner`).
    const KEY: &'static str;

    /// What serde cannot check; the problem names its field (the engine adds the key).
    fn check(&self) -> Result<(), SettingError> {
        Ok(())
    }

    /// Deprecated settings in use, one sentence each (the engine logs them).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// The longest one build of this component may take, when it builds.
    fn build_timeout(&self) -> Option<Duration> {
        None
    }
}

/// A setting that serde accepted and its component does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingError {
    /// The field, in the configuration's spelling (`uid-base`).
    pub field: String,
    pub message: String,
}

impl SettingError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SettingError {
        SettingError { field: field.into(), message: message.into() }
    }
}

/// A section of the configuration that a component owns: its key, its schema, and how to read
/// it from the configuration's text.
#[derive(Clone, Copy)]
pub struct ConfigSection {
    pub key: &'static str,
    /// Its JSON schema (the doc comments of its type, for the reference).
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Reads it from a whole configuration document; its default when the document has none.
    pub read: fn(&str) -> Result<Arc<dyn AnySettings>, serde_yaml::Error>,
}

impl fmt::Debug for ConfigSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSection").field("key", &self.key).finish()
    }
}

impl ConfigSection {
    /// The section of settings type `T`.
    pub const fn of<T: ComponentSettings>() -> ConfigSection {
        ConfigSection { key: T::KEY, schema: |g| g.subschema_for::<T>(), read: read_section::<T> }
    }
}

/// A component's settings, whatever their type.
pub trait AnySettings: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn check(&self) -> Result<(), SettingError>;
    fn warnings(&self) -> Vec<String>;
    fn build_timeout(&self) -> Option<Duration>;
    fn to_json(&self) -> serde_json::Value;
}

impl<T: ComponentSettings> AnySettings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn check(&self) -> Result<(), SettingError> {
        ComponentSettings::check(self)
    }
    fn warnings(&self) -> Vec<String> {
        ComponentSettings::warnings(self)
    }
    fn build_timeout(&self) -> Option<Duration> {
        ComponentSettings::build_timeout(self)
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Reads section `T::KEY` of a YAML document, streaming, so that an error carries the line and
/// column in the document (and the path below the key).
fn read_section<T: ComponentSettings>(text: &str) -> Result<Arc<dyn AnySettings>, serde_yaml::Error> {
    struct Find<T>(PhantomData<T>);
    impl<'de, T: ComponentSettings> Visitor<'de> for Find<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of settings")
        }
        fn visit_unit<E>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<serde_yaml::Value>()? {
                if key.as_str() == Some(T::KEY) {
                    found = map.next_value::<Option<T>>()?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let found = serde_yaml::Deserializer::from_str(text).deserialize_any(Find::<T>(PhantomData))?;
    Ok(Arc::new(found.unwrap_or_default()))
}

/// The components' settings of one configuration, by key. A section the configuration leaves
/// out has its defaults.
#[derive(Clone, Default)]
pub struct Sections(BTreeMap<&'static str, Arc<dyn AnySettings>>);

impl Sections {
    /// Reads `sections` from a configuration document and checks each.
    pub fn read(text: &str, sections: &[ConfigSection]) -> Result<Sections, SectionError> {
        let mut out = Sections::default();
        for s in sections {
            let value = (s.read)(text).map_err(|e| SectionError::Parse(e.to_string()))?;
            value.check().map_err(|e| SectionError::Check { key: s.key, error: e })?;
            out.0.insert(s.key, value);
        }
        Ok(out)
    }

    /// The settings of type `T`: as configured, else its defaults.
    pub fn get<T: ComponentSettings>(&self) -> T {
        self.0.get(T::KEY).and_then(|v| v.as_any().downcast_ref::<T>()).cloned().unwrap_or_default()
    }

    /// Sets (or replaces) the settings of type `T`.
    pub fn set<T: ComponentSettings>(&mut self, value: T) {
        self.0.insert(T::KEY, Arc::new(value));
    }

    /// Every section read, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &dyn AnySettings)> {
        self.0.iter().map(|(k, v)| (*k, v.as_ref()))
    }
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl PartialEq for Sections {
    fn eq(&self, other: &Sections) -> bool {
        let json = |s: &Sections| s.0.iter().map(|(k, v)| (*k, v.to_json())).collect::<BTreeMap<_, _>>();
        json(self) == json(other)
    }
}

impl Serialize for Sections {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, v.to_json())))
    }
}

/// Accepts the sections' keys with any value, and keeps nothing: [`Sections::read`] reads them
/// with their types (a configuration's struct takes them in with `#[serde(flatten)]`).
impl<'de> Deserialize<'de> for Sections {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sections, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Sections::default())
    }
}

/// A section that could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SectionError {
    /// Not the section's shape (serde's message, with its key, line and column).
    #[error("{0}")]
    Parse(String),
    #[error("{key}.{error}")]
    Check { key: &'static str, error: SettingError },
}

/// The keys of a YAML document's top-level mapping, in order (for an unknown-key check that
/// names the line: the error is raised where the key is).
pub fn check_keys(text: &str, known: &[&str]) -> Result<(), serde_yaml::Error> {
    struct Keys<'a>(&'a [&'a str]);
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of settings")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key_seed(Known(self.0))?.is_some() {
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    /// A key that must be known: refused while it is read, so that the error has its place.
    struct Known<'a>(&'a [&'a str]);
    impl<'de> serde::de::DeserializeSeed<'de> for Known<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Known<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a setting's name")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<(), E> {
            if self.0.contains(&key) {
                return Ok(());
            }
            Err(E::custom(format_args!(
                "unknown field `{key}`, expected one of {}",
                self.0.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )))
        }
    }
    serde_yaml::Deserializer::from_str(text).deserialize_any(Keys(known))
}

/// A runner's deprecated `build-network` setting: absent, or not empty.
pub fn check_build_network(value: Option<&str>) -> Result<(), SettingError> {
    match value {
        Some("") => Err(SettingError::new("build-network", "empty (and deprecated: use network.build)")),
        _ => Ok(()),
    }
}

/// The warning for a runner's deprecated `build-network` setting, when set.
pub fn deprecated_build_network(key: &str, value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            format!(
                "{key}.build-network is deprecated: network.build says what every runner's builds reach; \
                 `{key}.build-network: {v}` still decides this runner's, over network.build"
            )
        })
        .into_iter()
        .collect()
}

/// The build timeout of the runners that build, unless configured.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A duration in a configuration: `500ms`, `30s`, `15m`, `1h 30m`; a bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        String::json_schema(g)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Serde for a [`Duration`] field written as a [`HumanDuration`]
/// (`#[serde(with = "crate::settings::duration")]`, `#[schemars(with = "HumanDuration")]`).
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        HumanDuration(*d).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(d).map(|h| h.0)
    }
}

/// A duration that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{text}` ({reason}); write e.g. 500ms, 30s, 15m")]
pub struct DurationError {
    pub text: String,
    pub reason: String,
}

/// Parses `500ms`, `30s`, `15m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| DurationError { text: s.to_string(), reason: e.to_string() })
}

/// What builds reach (`network.build` of the configuration), for every runner that builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BuildNetwork {
    /// A network of the build's own: the internet and the engine's resolver, never the host,
    /// its loopback or its network (as `network.impure: egress` for runs). Where the engine
    /// cannot make one, builds get no network and a build that fails for want of one says why.
    #[default]
    Egress,
    /// The host's network.
    Host,
    /// No network.
    None,
}

impl BuildNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildNetwork::Egress => "egress",
            BuildNetwork::Host => "host",
            BuildNetwork::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Demo {
        size: u32,
        timeout: HumanDuration,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo { size: 7, timeout: HumanDuration(Duration::from_secs(1)) }
        }
    }

    impl ComponentSettings for Demo {
        const KEY: &'static str = "demo-runner";
        fn check(&self) -> Result<(), SettingError> {
            if self.size == 0 {
                return Err(SettingError::new("size", "must be at least 1"));
            }
            Ok(())
        }
    }

    const SECTIONS: [ConfigSection; 1] = [ConfigSection::of::<Demo>()];

    #[test]
    fn a_section_is_read_by_its_type_and_defaults_when_absent() {
        let s = Sections::read("other: 1\ndemo-runner: {size: 3, timeout: 2m}\n", &SECTIONS).unwrap();
        assert_eq!(s.get::<Demo>(), Demo { size: 3, timeout: HumanDuration(Duration::from_secs(120)) });
        let s = Sections::read("other: 1\n", &SECTIONS).unwrap();
        assert_eq!(s.get::<Demo>(), Demo::default());
        let s = Sections::read("demo-runner:\n", &SECTIONS).unwrap();
        assert_eq!(s.get::<Demo>(), Demo::default());
    }

    #[test]
    fn errors_name_the_key_the_field_and_the_line() {
        let e = Sections::read("a: 1\ndemo-runner:\n  sise: 3\n", &SECTIONS).unwrap_err().to_string();
        assert!(e.contains("demo-runner") && e.contains("sise") && e.contains("line 3"), "{e}");
        let e = Sections::read("demo-runner: {timeout: soon}\n", &SECTIONS).unwrap_err().to_string();
        assert!(e.contains("soon") && e.contains("line 1"), "{e}");
        let e = Sections::read("demo-runner: {size: 0}\n", &SECTIONS).unwrap_err().to_string();
        assert_eq!(e, "demo-runner.size: must be at least 1");
    }

    #[test]
    fn unknown_top_level_keys_are_named_with_their_line() {
        check_keys("a: 1\nb: 2\n", &["a", "b"]).unwrap();
        let e = check_keys("a: 1\nbee: 2\n", &["a", "b"]).unwrap_err().to_string();
        assert!(e.contains("`bee`") && e.contains("line 2"), "{e}");
    }
}
