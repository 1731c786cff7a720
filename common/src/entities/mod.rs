//! sea-orm entities of the system of record (PostgreSQL). The schema itself
//! is created by `issuer-worker migrate`.

pub mod campaigns;
pub mod coupons;
