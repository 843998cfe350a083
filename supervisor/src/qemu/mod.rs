//! QEMU: the command line (a pure function of the manifest), the processes
//! it runs as, and QMP.

pub mod argv;
pub mod process;
pub mod qmp;
