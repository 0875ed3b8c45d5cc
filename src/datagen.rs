//! Deterministic synthetic workload generator (`braid gen`).
