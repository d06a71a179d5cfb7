pub mod diag;
pub mod ops;
pub mod yaml;
