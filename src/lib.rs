//! # braid — a multi-topic correlation stream processor
//!
//! braid reads several topics, joins their events per key in event-time windows kept
//! in RocksDB, and writes correlated records (customer journeys, order fulfilment),
//! late-arrival reports and dead letters onto output topics. The product contract is
//! the project's SPEC; `docs/` explains the topology file and the semantics.
//!
//! ## Data flow, one module per stage
//!
//! ```text
//!  topology ──▶ plan
//!                │
//!  log / fluvio ──▶ source ──▶ decode ──▶ time ──▶ engine ──▶ outbox ──▶ sink
//!                               (JSON →   (water-  (operators:            (log /
//!                                event)    marks)   on_event,              Fluvio)
//!                                                   on_watermark)
//!                                                     │
//!                                                   state (RocksDB)
//! ```
//!
//! - [`log`]: the embedded log, braid's single-machine broker: topics → partitions →
//!   CRC-framed append-only segments with a sparse offset/time index, one writer per
//!   partition, readers that follow the tail.
//! - [`fluvio`]: the Fluvio connector (official `fluvio` crate): partition streams that
//!   repair Fluvio's offset gaps, pinned producers, offsets and timestamp search.
//! - [`source`]: the broker a job reads (embedded log or Fluvio) behind one interface:
//!   partitions, offsets, start positions, readers that read by append-time slice, and
//!   the instance's share of the partitions when a job is scaled out.
//! - [`sink`]: appending output to a partition and reading output tails back, on either
//!   broker; the tools' keyed producers.
//! - [`topology`]: topology files → validated [`topology::Plan`]s, reporting every
//!   problem at once with line, column, field and hint.
//! - [`decode`]: one source record (JSON bytes) → an `Event` (key, event time, id, raw
//!   payload) or a `DeadLetter` with a precise reason; the per-record hot path.
//! - [`time`]: per-partition and job watermarks, partition idleness, checkpointable.
//! - [`engine`]: the correlation operators (plain synchronous code, watermark-driven)
//!   and the output records they produce: journeys, late-arrival reports, duplicates.
//! - [`state`]: the RocksDB state store: per-key operator state, source positions,
//!   watermarks and the output outbox, committed together in one atomic write.
//! - [`outbox`]: the relay that publishes committed output to the output topics exactly
//!   once (sequence numbers per output partition, recovery by reading their tails).
//! - [`job`]: the runtime that wires source → decode → watermarks → sharded operators →
//!   checkpoint → outbox on threads joined by bounded channels; `braid run`.
//! - [`inspect`]: `braid inspect`, a read-only report of a job's state directory
//!   (positions and lag, watermark, pending output, open windows and what they wait for).
//! - [`replay`]: a replay's range (`--from`/`--to` per source, topic or partition) and
//!   its isolation from the live job (own state directory, own output topics).
//! - [`datagen`]: the deterministic synthetic workload (customer sessions, order parts,
//!   disorder, late, duplicate and poison records) used by the demo, tests and benches.
//! - [`fault`]: the test hooks that crash, stall or fail a run at exact points.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`cli`]: the `braid` command line; the only place that uses `anyhow`.
//!
//! Every library error is a typed `thiserror` enum that names its context (file, topic,
//! partition, offset).

pub mod cli;
pub mod datagen;
pub mod decode;
pub mod engine;
pub mod fault;
pub mod fluvio;
pub mod inspect;
pub mod job;
pub mod log;
pub mod metrics;
pub mod outbox;
pub mod replay;
pub mod sink;
pub mod source;
pub mod state;
pub mod time;
pub mod topology;
