//! A load's cube rows, computed while the load is staged, from the rows of each group of
//! days as they are written: the load reads its rows once, and the memory held for cubes
//! is bounded by the load's budget, not by its size.
//!
//! - A cube with a `day` or `minute` column and no retention gets its partial rows written
//!   as files of its table (committed after `traces`, see [`super::build`]): rows of
//!   different days never share a cell, so each group's rows are final for the load.
//! - Other cubes (no day grain, or a retention) hold their partial rows in memory, merged
//!   whenever they double; a retention cube drops what falls out of its retention as the
//!   load's newest instant moves. Past a quarter of the budget (for the held cubes
//!   together), a coarse cube writes its rows out as partial rows (a cube holds partial
//!   rows; queries re-aggregate them), and a retention cube gives up: it is rebuilt from
//!   `traces` after the commit.
//!
//! When the load's rows change after they were aggregated (another load committed some of
//! the same contacts meanwhile), the partials are dropped ([`LoadPartials::invalidate`])
//! and the cubes are computed from the committed rows instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::build::{
    CubeError, aggregate_sql, conform, open as open_cube, retained, run, single_thread_session,
    writer_properties,
};
use super::{CubeDef, Derivation};
use crate::load::LoadError;
use crate::load::stage::{Part, Target};
use crate::schema::traces_schema;
use crate::warehouse::Warehouse;

/// Rows held for one cube.
struct CubePartial {
    def: CubeDef,
    /// Where its files are written.
    target: Target,
    /// Whether each group's rows go straight to files.
    to_files: bool,
    /// Files written so far (not committed).
    files: Vec<Part>,
    /// Partial rows held in memory, their count, and the count after the last merge.
    held: Vec<RecordBatch>,
    held_rows: usize,
    merged_rows: usize,
    /// False when the rows cannot be kept within the budget (the cube is then rebuilt).
    usable: bool,
}

/// What a load brings to one cube: files already written, and the rows still to write.
pub struct CubeRows {
    pub files: Vec<Part>,
    pub rows: Vec<RecordBatch>,
    /// For a retention cube: where it is complete from once these rows are added.
    pub complete_from: Option<i64>,
}

/// The cube rows of a load's new traces, computed as days are staged.
pub struct LoadPartials {
    slas: BTreeMap<String, i32>,
    cubes: Vec<CubePartial>,
    /// Rows of staged days not aggregated yet, and their size in memory.
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    /// Size of a group of rows aggregated at once, and of the rows a cube may hold.
    group_bytes: usize,
    held_cap: usize,
    valid: bool,
}

impl std::fmt::Debug for LoadPartials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadPartials")
            .field(
                "cubes",
                &self.cubes.iter().map(|c| &c.def.name).collect::<Vec<_>>(),
            )
            .field("valid", &self.valid)
            .finish()
    }
}

/// Rows a held cube always may keep before it merges them.
const MIN_MERGE_ROWS: usize = 64 * 1024;

fn cube_error(def: &CubeDef, e: impl Into<datafusion::error::DataFusionError>) -> CubeError {
    CubeError::Query {
        cube: def.name.clone(),
        source: Box::new(e.into()),
    }
}

fn staging(def: &CubeDef, e: LoadError) -> CubeError {
    cube_error(
        def,
        datafusion::error::DataFusionError::External(Box::new(e)),
    )
}

/// Whether the rows of different days never share a cell of `def`.
fn day_grain(def: &CubeDef) -> bool {
    def.dimensions
        .iter()
        .any(|d| d.derivation == Derivation::Column && matches!(d.name.as_str(), "day" | "minute"))
}

/// `batches` as a table of `partitions` partitions (aggregated on as many threads).
fn mem_table(
    def: &CubeDef,
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
    partitions: usize,
) -> Result<MemTable, CubeError> {
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.max(1)];
    let count = parts.len();
    for (i, b) in batches.into_iter().enumerate() {
        parts[i % count].push(b);
    }
    MemTable::try_new(schema, parts).map_err(|e| cube_error(def, e))
}

impl LoadPartials {
    /// Partials for every configured cube (`None` when cubes are off), holding about
    /// `budget` bytes at most. Opens (and creates) each cube's table.
    pub async fn open(warehouse: &Warehouse, budget: usize) -> Result<Option<Self>, CubeError> {
        let config = warehouse.config();
        let defs = CubeDef::all(&config.cubes)?;
        if defs.is_empty() {
            return Ok(None);
        }
        let mut cubes = Vec::with_capacity(defs.len());
        for def in defs {
            let table = open_cube(warehouse, &def).await?;
            let target = Target::of_table(&table, def.schema(), vec![], writer_properties())
                .map_err(|e| {
                    CubeError::Warehouse(warehouse.dir_error(&def.dir(&config.sla_seconds))(e))
                })?;
            cubes.push(CubePartial {
                to_files: def.retention.is_none() && day_grain(&def),
                def,
                target,
                files: Vec::new(),
                held: Vec::new(),
                held_rows: 0,
                merged_rows: 0,
                usable: true,
            });
        }
        Ok(Some(LoadPartials {
            slas: config.sla_seconds.clone(),
            cubes,
            pending: Vec::new(),
            pending_bytes: 0,
            group_bytes: (budget / 4).max(1 << 20),
            held_cap: (budget / 4).max(1 << 20),
            valid: true,
        }))
    }

    /// Add rows of `traces` (with `day`) that the load will commit, each row once.
    pub async fn push(&mut self, rows: RecordBatch) -> Result<(), CubeError> {
        if !self.valid || rows.num_rows() == 0 {
            return Ok(());
        }
        self.pending_bytes += rows.get_array_memory_size();
        self.pending.push(rows);
        if self.pending_bytes >= self.group_bytes {
            self.aggregate().await?;
        }
        Ok(())
    }

    /// Aggregate the rows pushed so far.
    pub async fn flush(&mut self) -> Result<(), CubeError> {
        if self.valid && !self.pending.is_empty() {
            self.aggregate().await?;
        }
        Ok(())
    }

    /// The load's rows changed after they were aggregated: drop what was computed (files
    /// written are removed) and compute nothing more.
    pub async fn invalidate(&mut self) {
        self.valid = false;
        self.pending.clear();
        self.pending_bytes = 0;
        self.remove_files().await;
        for cube in &mut self.cubes {
            cube.held.clear();
        }
    }

    /// Whether the partials are those of the rows the load commits.
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Remove every file written (a load that commits none of them).
    pub async fn remove_files(&mut self) {
        for cube in &mut self.cubes {
            for part in std::mem::take(&mut cube.files) {
                cube.target.remove(&part.add.path).await;
            }
        }
    }

    /// The rows of cube `name` brought by the load, or `None` when they were not kept
    /// (the cube is then rebuilt): files already written and held rows, merged and
    /// within the retention counted from the load's newest row (and not before
    /// `complete_from`). Each cube is taken once.
    pub async fn take(
        &mut self,
        name: &str,
        complete_from: Option<i64>,
    ) -> Result<Option<CubeRows>, CubeError> {
        let Some(cube) = self.cubes.iter_mut().find(|c| c.def.name == name) else {
            return Ok(None);
        };
        if !self.valid || !cube.usable {
            for part in std::mem::take(&mut cube.files) {
                cube.target.remove(&part.add.path).await;
            }
            return Ok(None);
        }
        let held = std::mem::take(&mut cube.held);
        let (rows, complete_from) = if held.is_empty() {
            (Vec::new(), complete_from)
        } else {
            // on error the files stay listed, for `discard` to remove
            merge(&cube.def, &self.slas, held, complete_from).await?
        };
        Ok(Some(CubeRows {
            files: std::mem::take(&mut cube.files),
            rows,
            complete_from,
        }))
    }

    /// Remove the files written for cube `name` (it is rebuilt instead).
    pub async fn discard(&mut self, name: &str) {
        if let Some(cube) = self.cubes.iter_mut().find(|c| c.def.name == name) {
            for part in std::mem::take(&mut cube.files) {
                cube.target.remove(&part.add.path).await;
            }
            cube.held.clear();
        }
    }

    /// Aggregate the pending rows into every cube: the finest first, each coarser one
    /// from the smallest finer cube it derives from.
    async fn aggregate(&mut self) -> Result<(), CubeError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let ctx = single_thread_session();
        let threads = ctx.state().config().target_partitions();
        let first = &self.cubes[0].def;
        ctx.register_table(
            "new_traces",
            Arc::new(mem_table(first, traces_schema(), pending, threads)?),
        )
        .map_err(|e| cube_error(first, e))?;
        let mut done: Vec<(usize, u64)> = Vec::new();
        for i in 0..self.cubes.len() {
            let def = self.cubes[i].def.clone();
            let parent = done
                .iter()
                .filter(|(p, _)| {
                    let p = &self.cubes[*p].def;
                    p.retention.is_none() && def.derives_from(p)
                })
                .min_by_key(|(_, rows)| *rows)
                .map(|(p, _)| &self.cubes[*p].def);
            let source = parent.map_or("new_traces".to_string(), |p| format!("partial_{}", p.name));
            let sql = aggregate_sql(&def, &self.slas, &source, parent, None);
            let batches = conform(&def, &def.schema(), run(&ctx, &def.name, &sql).await?)?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            if def.retention.is_none() && rows > 0 {
                let partial = mem_table(&def, def.schema(), batches.clone(), threads)?;
                ctx.register_table(format!("partial_{}", def.name).as_str(), Arc::new(partial))
                    .map_err(|e| cube_error(&def, e))?;
                done.push((i, rows as u64));
            }
            let cube = &mut self.cubes[i];
            if !cube.usable || rows == 0 {
                continue;
            }
            if cube.to_files {
                let all = datafusion::arrow::compute::concat_batches(&def.schema(), &batches)
                    .map_err(|e| cube_error(&def, e))?;
                let parts = cube
                    .target
                    .write_sorted(all)
                    .await
                    .map_err(|e| staging(&def, e))?;
                cube.files.extend(parts);
                continue;
            }
            cube.held.extend(batches);
            cube.held_rows += rows;
            if cube.held_rows > (2 * cube.merged_rows).max(MIN_MERGE_ROWS) {
                self.merge_held(i).await?;
            }
        }
        Ok(())
    }

    /// Merge the rows held for cube `i` into one row per cell (within the retention); past
    /// the cap, write them out (or, for a retention cube, give up on it).
    async fn merge_held(&mut self, i: usize) -> Result<(), CubeError> {
        // the cap is for the rows of every held cube together
        let others: usize = self
            .cubes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, c)| &c.held)
            .map(RecordBatch::get_array_memory_size)
            .sum();
        let cube = &mut self.cubes[i];
        let held = std::mem::take(&mut cube.held);
        let (merged, _) = merge(&cube.def, &self.slas, held, None).await?;
        let rows: usize = merged.iter().map(RecordBatch::num_rows).sum();
        let bytes: usize = merged.iter().map(RecordBatch::get_array_memory_size).sum();
        cube.merged_rows = rows;
        cube.held_rows = rows;
        if bytes + others <= self.held_cap {
            cube.held = merged;
            return Ok(());
        }
        cube.held_rows = 0;
        cube.merged_rows = 0;
        if cube.def.retention.is_some() {
            tracing::info!(
                "cube {}: the load's rows within its retention pass the memory budget; it will be rebuilt after the load",
                cube.def.name
            );
            cube.usable = false;
            return Ok(());
        }
        let all = datafusion::arrow::compute::concat_batches(&cube.def.schema(), &merged)
            .map_err(|e| cube_error(&cube.def, e))?;
        drop(merged);
        let parts = cube
            .target
            .write_sorted(all)
            .await
            .map_err(|e| staging(&cube.def, e))?;
        cube.files.extend(parts);
        Ok(())
    }
}

/// `held` partial rows of `def` merged into one row per cell, within its retention
/// counted from their newest row (and not before `complete_from`): the rows and where
/// the cube is complete from.
async fn merge(
    def: &CubeDef,
    slas: &BTreeMap<String, i32>,
    held: Vec<RecordBatch>,
    complete_from: Option<i64>,
) -> Result<(Vec<RecordBatch>, Option<i64>), CubeError> {
    let ctx: SessionContext = single_thread_session();
    let threads = ctx.state().config().target_partitions();
    ctx.register_table(
        "held",
        Arc::new(mem_table(def, def.schema(), held, threads)?),
    )
    .map_err(|e| cube_error(def, e))?;
    let (filter, complete_from) = retained(&ctx, def, "held", complete_from).await?;
    let sql = aggregate_sql(def, slas, "held", Some(def), filter);
    let rows = conform(def, &def.schema(), run(&ctx, &def.name, &sql).await?)?;
    Ok((rows, complete_from))
}
