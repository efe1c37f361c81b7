//! Tracecube SQL functions (paths, KPIs, impact): pure functions over Arrow arrays, no I/O.
