//! What a build made, as the engine keeps it: a reference and a size for everyone, and the
//! runner's own record, typed in the runner and opaque to the engine.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a build made: opaque to the engine, which stores it in its cache and hands it back to
/// `start` and `release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// What it is, for people and the runner (an image id, a store path).
    pub reference: String,
    /// Bytes it takes outside the engine's cache (an image in a daemon's storage).
    pub size: u64,
    /// Anything else the runner wants back.
    #[serde(default)]
    pub data: ArtifactData,
}

#[cfg(feature = "cache")]
impl addon_cache::EntryData for Artifact {
    fn external_size(&self) -> u64 {
        self.size
    }
}

/// What a runner records of an artifact for itself (an image's configuration, the id mapping it
/// was unpacked with). Each runner writes its own serde type with [`ArtifactData::of`] and reads
/// it back with [`ArtifactData::read`]; the engine, which serves built-in runners and plugins
/// alike, only keeps it: as JSON in the cache entry's `entry.json` (the same JSON as the record
/// would serialise to by itself) and in the protocol's `Artifact.data_json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArtifactData(serde_json::Value);

/// A record that could not be written as, or read back from, an artifact's data.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArtifactDataError(#[from] serde_json::Error);

impl ArtifactData {
    /// No record (JSON `null`).
    pub fn none() -> ArtifactData {
        ArtifactData::default()
    }

    /// `record` as an artifact's data.
    pub fn of<D: Serialize>(record: &D) -> Result<ArtifactData, ArtifactDataError> {
        Ok(ArtifactData(serde_json::to_value(record)?))
    }

    /// The record, read as `D` (the type the runner wrote it with).
    pub fn read<D: DeserializeOwned>(&self) -> Result<D, ArtifactDataError> {
        Ok(D::deserialize(&self.0)?)
    }

    pub fn is_none(&self) -> bool {
        self.0.is_null()
    }

    /// The data as JSON text (the protocol's `data_json`).
    pub fn to_json(&self) -> String {
        self.0.to_string()
    }

    /// Data from JSON text; empty text is no record.
    pub fn from_json(text: &str) -> Result<ArtifactData, ArtifactDataError> {
        if text.is_empty() {
            return Ok(ArtifactData::none());
        }
        Ok(ArtifactData(serde_json::from_str(text)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        source: String,
        id_map: Option<(u32, u32)>,
    }

    /// The record is kept as the JSON it serialises to, so that entries written before the data
    /// was typed read the same, and a record reads back as the type it was written with.
    #[test]
    fn a_record_is_its_own_json_and_reads_back() {
        let record = Record { source: "docker.io/library/alpine".into(), id_map: Some((100000, 65536)) };
        let a = Artifact { reference: "sha256:1".into(), size: 0, data: ArtifactData::of(&record).unwrap() };
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"reference": "sha256:1", "size": 0,
                "data": {"source": "docker.io/library/alpine", "id_map": [100000, 65536]}})
        );
        let back: Artifact = serde_json::from_value(json).unwrap();
        assert_eq!(back.data.read::<Record>().unwrap(), record);
        assert!(back.data.read::<u64>().is_err(), "another type is an error, not a default");
    }

    #[test]
    fn no_record_is_null_and_may_be_absent() {
        let a: Artifact = serde_json::from_str(r#"{"reference": "/nix/store/x", "size": 0}"#).unwrap();
        assert!(a.data.is_none());
        assert_eq!(serde_json::to_value(&a).unwrap()["data"], serde_json::Value::Null);
        assert_eq!(ArtifactData::from_json("").unwrap(), ArtifactData::none());
        assert_eq!(ArtifactData::from_json(&ArtifactData::none().to_json()).unwrap(), ArtifactData::none());
        assert!(ArtifactData::from_json("{").is_err());
    }
}
