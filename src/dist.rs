//! The ranks of a data-parallel run: the processes of one MPI job (`mpirun -n N lors train`,
//! `srun -n N lors train`), each holding the whole model and computing its share of every
//! step's micro-batches. MPI is behind the `mpi` cargo feature; a build without it refuses
//! to run as one rank of many, and one process alone is a world of one.
//!
//! The collectives here gather every rank's values to every rank, so each rank can combine
//! them in one fixed order (the single process's): results do not depend on the world size.

use std::sync::OnceLock;

use crate::error::{LorsError, Result};

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    pub rank: usize,
    pub size: usize,
}

impl Ranks {
    /// One process alone.
    pub const SINGLE: Ranks = Ranks { rank: 0, size: 1 };

    /// Whether this rank writes the run (rank 0).
    pub fn is_root(self) -> bool {
        self.rank == 0
    }
}

static RANKS: OnceLock<Ranks> = OnceLock::new();

/// The world this process belongs to (a world of one until [`init`] joins an MPI job).
pub fn ranks() -> Ranks {
    RANKS.get().copied().unwrap_or(Ranks::SINGLE)
}

/// How many processes the launcher that started this one started, from its environment
/// (Open MPI's `mpirun`, a PMI launcher such as `srun`); 1 without a launcher.
pub fn launched_size() -> usize {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ]
    .iter()
    .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
    .max()
    .unwrap_or(1)
}

/// An error when `srun` started this process as one of several tasks without an MPI
/// plugin (no PMIx or PMI in its environment): Open MPI could not join the ranks.
#[cfg(feature = "mpi")]
fn check_process_manager() -> Result<()> {
    let has = |v: &str| std::env::var_os(v).is_some();
    if ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| has(v))
    {
        return Ok(());
    }
    Err(LorsError::invalid(
        "mpi",
        "srun started this as one of several tasks without an MPI plugin, so the ranks \
         cannot join: use `srun --mpi=pmix` (under the SLURM executor, `launcher = \"srun \
         --mpi=pmix\"`, the default) or `mpirun`",
    ))
}

/// Keeps MPI initialised while it lives (dropping it finalises MPI).
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Join the MPI job this process was launched in, if any; keep the returned session alive
/// until the process is done with MPI.
pub fn init() -> Result<Session> {
    let launched = launched_size();
    #[cfg(feature = "mpi")]
    {
        if launched > 1 {
            check_process_manager()?;
            let universe = mpi::initialize()
                .ok_or_else(|| LorsError::invalid("mpi", "MPI was initialised already"))?;
            let world = mpi::topology::SimpleCommunicator::world();
            let _ = RANKS.set(Ranks {
                rank: usize::try_from(mpi::traits::Communicator::rank(&world)).unwrap_or(0),
                size: usize::try_from(mpi::traits::Communicator::size(&world)).unwrap_or(1),
            });
            return Ok(Session {
                _universe: Some(universe),
            });
        }
        Ok(Session { _universe: None })
    }
    #[cfg(not(feature = "mpi"))]
    {
        if launched > 1 {
            return Err(LorsError::invalid(
                "mpi",
                format!(
                    "started as one of {launched} processes, but this lors was built without \
                     MPI: build it with `cargo build --release --features mpi`"
                ),
            ));
        }
        Ok(Session {})
    }
}

macro_rules! all_gather {
    ($name:ident, $t:ty) => {
        /// Every rank's `local` (each the same length), rank after rank, on every rank.
        pub fn $name(local: &[$t]) -> Vec<$t> {
            #[cfg(feature = "mpi")]
            if ranks().size > 1 {
                use mpi::traits::*;
                let world = mpi::topology::SimpleCommunicator::world();
                let mut all = vec![<$t>::default(); local.len() * ranks().size];
                world.all_gather_into(local, &mut all[..]);
                return all;
            }
            local.to_vec()
        }
    };
}

all_gather!(all_gather_u8, u8);
all_gather!(all_gather_f32, f32);
all_gather!(all_gather_f64, f64);

/// Wait until every rank is here.
pub fn barrier() {
    all_gather_u8(&[0]);
}

/// Rank 0's `text` on every rank (a run directory named by rank 0's clock).
pub fn from_root(text: &str) -> String {
    let lengths = all_gather_f64(&[text.len() as f64]);
    let longest = lengths.iter().fold(0f64, |m, &l| m.max(l)) as usize;
    let mut mine = text.as_bytes().to_vec();
    mine.resize(longest, 0);
    let all = all_gather_u8(&mine);
    String::from_utf8_lossy(&all[..lengths[0] as usize]).into_owned()
}

/// Whether any rank says yes (a stop asked of one rank is every rank's).
pub fn any(flag: bool) -> bool {
    all_gather_f64(&[f64::from(u8::from(flag))])
        .iter()
        .any(|&f| f > 0.0)
}

/// An error unless every rank holds the same `bytes` (compared by SHA-256); `what` names
/// them.
pub fn check_same(what: &str, bytes: &[u8]) -> Result<()> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let words: Vec<f64> = digest
        .chunks(4)
        .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let all = all_gather_f64(&words);
    let first = &all[..words.len()];
    match all.chunks(words.len()).position(|w| w != first) {
        None => Ok(()),
        Some(rank) => Err(LorsError::invalid(
            "mpi",
            format!("rank {rank}'s {what} differs from rank 0's: every rank must run the same"),
        )),
    }
}
