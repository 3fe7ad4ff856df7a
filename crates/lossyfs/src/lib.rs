//! lossyfs: a FUSE filesystem for power-loss tests. It passes everything through to a
//! backing directory but keeps file data in memory until the file is fsynced; killing
//! its process loses exactly the data no one synced, as a power failure does with a
//! disk's volatile state. See [`fs`] for what is and is not modelled.

pub mod fs;
pub mod pages;
