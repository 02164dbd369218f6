//! JSON Schemas generated from the types, for editors and for `addon schema`.

use crate::model::Descriptor;
use crate::output::AddonOutput;

/// The JSON Schema of the descriptor.
pub fn descriptor_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Descriptor)).expect("a schema is JSON")
}

/// The JSON Schema of the addon output.
pub fn output_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(AddonOutput)).expect("a schema is JSON")
}
