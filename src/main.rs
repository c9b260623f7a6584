//! The `smartgate` command line.

fn main() {}
