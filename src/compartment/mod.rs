//! The Patient compartment: which resources belong to which patient (R4 definition).

pub mod definition;
pub mod fhirpath;
pub mod granular;
pub mod membership;
