//! Domain vocabulary shared by every rsvault layer.
//!
//! Nothing here knows HTTP, SQL or cryptography. It defines what an ARM resource id is
//! ([`ids::ResourceId`]), which names Azure accepts ([`names`]), how `api-version` values are read
//! ([`apiversion::ApiVersion`]), how an OData `$filter` is parsed ([`odata`]), how time is read and written the way Azure writes it ([`time`]), and the
//! one domain error type ([`Error`]) that every library crate returns and that the API crate maps, in one
//! place, to ARM's error envelope.

pub mod apiversion;
pub mod error;
pub mod ids;
pub mod names;
pub mod odata;
pub mod time;

pub use error::{Error, ErrorKind, Result};
