//! Data parallelism on PyTorch's own distributed engine, c10d: a process group of libtorch's
//! backends (NCCL for CUDA tensors, Gloo for CPU tensors) behind a narrow [`Comm`] type, and the
//! launch environment of `torchrun` and Slurm ([`Launch`]).
//!
//! `tch` has no distributed API; the pinned libtorch wheel ships c10d (`TCPStore`,
//! `ProcessGroupGloo` in libtorch_cpu, `ProcessGroupNCCL` in libtorch_cuda). `shim.cpp`, built by
//! `build.rs` against the wheel's headers, binds the calls used here (create a store and a group,
//! all-reduce, broadcast, barrier) with a C interface; nothing here speaks a protocol of its own.
//!
//! A [`Comm`] of world size 1 ([`Comm::single`], the default) makes every collective a no-op, so
//! the training loops are written once for any world size.
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_longlong, c_void, CStr, CString};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

extern "C" {
    fn dsno_comm_backends() -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn dsno_comm_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        server: c_int,
        prefix: *const c_char,
        timeout_ms: c_longlong,
        backend: c_int,
        device: c_int,
        interfaces: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn dsno_comm_free(group: *mut c_void);
    fn dsno_comm_free_string(s: *mut c_char);
    fn dsno_comm_all_reduce_sum(group: *mut c_void, t: *mut c_void, err: *mut *mut c_char)
        -> c_int;
    fn dsno_comm_broadcast(
        group: *mut c_void,
        t: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn dsno_comm_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
}

/// The c10d backend of a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo`: CPU tensors, over TCP.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors, over NVLink, PCIe or the network.
    Nccl,
}

impl Backend {
    /// The backend for tensors on `device`: NCCL on a GPU, Gloo on the CPU (PyTorch's choice).
    pub fn for_device(device: Device) -> Backend {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    /// Whether this build of dsno has the backend (build.rs compiles a backend only where its
    /// headers are found).
    pub fn built(self) -> bool {
        // SAFETY: a pure function of how the shim was compiled.
        let bits = unsafe { dsno_comm_backends() };
        match self {
            Backend::Gloo => bits & 1 != 0,
            Backend::Nccl => bits & 2 != 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// This process's place in a group of processes, as a launcher describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    /// The rank among the processes of this machine: the GPU it uses.
    pub local_rank: usize,
    pub world_size: usize,
    /// Where rank 0 (or the launcher) hosts the rendezvous store.
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher already hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`, torchrun's
    /// agent): every rank connects as a client, under the key prefix `/worker/attempt_{restart}`.
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: which attempt of an elastic job this is.
    pub restart: u64,
    /// Whose variables described the group: `torchrun` (`RANK`, `WORLD_SIZE`, …) or `slurm`.
    pub launcher: &'static str,
    /// `GLOO_SOCKET_IFNAME`: the network interfaces of a CPU group (comma-separated), as in
    /// PyTorch; by default loopback for a store on 127.0.0.1, else the machine's own address.
    pub gloo_interfaces: Option<String>,
}

/// The port of a Slurm job's store when `MASTER_PORT` is not set: 15000 + the job id's last four
/// digits (PyTorch Lightning's choice), so that jobs sharing a node do not collide.
pub const SLURM_BASE_PORT: u32 = 15000;

impl Launch {
    /// Reads the launch from environment variables (`var` returns one, e.g. `std::env::var`);
    /// `None` for a single process: no launcher, or a world size of 1.
    ///
    /// - torchrun (and any `env://` launcher): `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
    ///   `LOCAL_RANK` (default: `RANK`), `TORCHELASTIC_USE_AGENT_STORE`,
    ///   `TORCHELASTIC_RESTART_COUNT`.
    /// - Both: `GLOO_SOCKET_IFNAME` (the network interfaces of a CPU group).
    /// - Slurm (`srun`): `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`; the store on
    ///   `MASTER_ADDR` or else the first host of `SLURM_STEP_NODELIST` (or `SLURM_JOB_NODELIST`),
    ///   port `MASTER_PORT` or else [`SLURM_BASE_PORT`] + the last four digits of `SLURM_JOB_ID`.
    ///
    /// Errors name the variable and what is wrong with it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                // c10d takes ranks and sizes as C ints: a larger value would be cut to 32 bits
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n <= MAX_LAUNCH_VALUE)
                    .map(Some)
                    .ok_or_else(|| {
                        Error::Distributed(format!(
                            "environment variable {name}=`{v}`: expected an integer in 0..={MAX_LAUNCH_VALUE}"
                        ))
                    }),
            }
        };
        let need = |name: &str, why: &str| -> Result<String> {
            var(name).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                Error::Distributed(format!("environment variable {name} is not set ({why})"))
            })
        };
        let port = |name: &str, v: &str| -> Result<u16> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    Error::Distributed(format!(
                        "environment variable {name}=`{v}`: expected a port in 1..=65535"
                    ))
                })
        };
        let launch = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.ok_or_else(|| {
                Error::Distributed("WORLD_SIZE is set but RANK is not".to_string())
            })?;
            if world <= 1 {
                return Self::check_single(rank, world, "WORLD_SIZE", "RANK");
            }
            let why = "the address of rank 0's store";
            Launch {
                rank,
                local_rank: num("LOCAL_RANK")?.unwrap_or(rank),
                world_size: world,
                master_addr: need("MASTER_ADDR", why)?,
                master_port: port("MASTER_PORT", &need("MASTER_PORT", why)?)?,
                agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
                restart: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0) as u64,
                launcher: "torchrun",
                gloo_interfaces: var("GLOO_SOCKET_IFNAME").filter(|v| !v.trim().is_empty()),
            }
        } else if let Some(world) = num("SLURM_NTASKS")? {
            let rank = num("SLURM_PROCID")?.ok_or_else(|| {
                Error::Distributed("SLURM_NTASKS is set but SLURM_PROCID is not".to_string())
            })?;
            if world <= 1 {
                return Self::check_single(rank, world, "SLURM_NTASKS", "SLURM_PROCID");
            }
            let master_addr = match var("MASTER_ADDR").filter(|v| !v.trim().is_empty()) {
                Some(a) => a,
                None => {
                    let list = var("SLURM_STEP_NODELIST")
                        .or_else(|| var("SLURM_JOB_NODELIST"))
                        .ok_or_else(|| {
                            Error::Distributed(
                                "Slurm: neither MASTER_ADDR nor SLURM_STEP_NODELIST / SLURM_JOB_NODELIST is set".to_string(),
                            )
                        })?;
                    first_host(&list).ok_or_else(|| {
                        Error::Distributed(format!(
                            "Slurm node list `{list}`: cannot read its first host; set MASTER_ADDR"
                        ))
                    })?
                }
            };
            let master_port = match var("MASTER_PORT") {
                Some(p) => port("MASTER_PORT", &p)?,
                None => {
                    let job = num("SLURM_JOB_ID")?.ok_or_else(|| {
                        Error::Distributed(
                            "Slurm: neither MASTER_PORT nor SLURM_JOB_ID is set".to_string(),
                        )
                    })?;
                    (SLURM_BASE_PORT + (job % 10_000) as u32) as u16
                }
            };
            Launch {
                rank,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                world_size: world,
                master_addr,
                master_port,
                agent_store: false,
                restart: 0,
                launcher: "slurm",
                gloo_interfaces: var("GLOO_SOCKET_IFNAME").filter(|v| !v.trim().is_empty()),
            }
        } else {
            return Ok(None);
        };
        if launch.rank >= launch.world_size {
            return Err(Error::Distributed(format!(
                "rank {} of a world of {}: the rank must be below the world size",
                launch.rank, launch.world_size
            )));
        }
        Ok(Some(launch))
    }

    fn check_single(rank: usize, world: usize, w: &str, r: &str) -> Result<Option<Launch>> {
        if world == 0 || rank != 0 {
            return Err(Error::Distributed(format!(
                "{w}={world}, {r}={rank}: a world needs at least one process and ranks below its size"
            )));
        }
        Ok(None)
    }
}

/// The largest rank, world size or count a launch variable may hold: c10d's C `int`.
pub const MAX_LAUNCH_VALUE: usize = i32::MAX as usize;

/// The first host of a Slurm node list: `gpu[07-09,12],cpu3` → `gpu07`, `node1,node2` → `node1`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']')? + end];
        let first = inner.split([',', '-']).next()?.trim();
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        return Some(format!("{prefix}{first}"));
    }
    (!prefix.is_empty()).then(|| prefix.to_string())
}

/// A c10d process group (the shim's handle).
struct Group(*mut c_void);

// SAFETY: c10d's process groups and stores are thread-safe objects behind intrusive pointers;
// the handle is only freed once, in `Drop`, when the last `Arc` goes.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the pointer came from dsno_comm_new and is freed once.
        unsafe { dsno_comm_free(self.0) }
    }
}

/// Turns the shim's status and message into a result.
fn check(status: c_int, err: *mut c_char, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    let msg = if err.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: the shim returns a NUL-terminated malloc'd string, freed here once.
        let s = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { dsno_comm_free_string(err) };
        s
    };
    Err(Error::Distributed(format!("{what}: {}", msg.trim())))
}

/// The process group of a data-parallel run: rank, world size and the collectives training
/// needs. Cloning shares the group.
#[derive(Clone)]
pub struct Comm {
    group: Option<Arc<Group>>,
    rank: usize,
    world: usize,
    device: Device,
    backend: Backend,
    timeout: Duration,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Comm {{ rank: {}, world: {}, backend: {} }}",
            self.rank,
            self.world,
            self.backend.name()
        )
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm::single()
    }
}

/// Elements per all-reduce bucket of [`Comm::all_reduce_mean_flat`]: 25 MiB of float32, the
/// bucket size of PyTorch's DistributedDataParallel.
pub const BUCKET_ELEMS: i64 = 25 * 1024 * 1024 / 4;

impl Comm {
    /// A world of one process: every collective returns at once.
    pub fn single() -> Comm {
        Comm {
            group: None,
            rank: 0,
            world: 1,
            device: Device::Cpu,
            backend: Backend::Gloo,
            timeout: Duration::ZERO,
        }
    }

    /// Joins the group that `launch` describes, with the backend for tensors on `device`; waits
    /// for every rank up to `timeout`, which also bounds every collective afterwards (a rank that
    /// died or hangs makes the others fail with an error, not wait forever).
    pub fn connect(launch: &Launch, device: Device, timeout: Duration) -> Result<Comm> {
        let backend = Backend::for_device(device);
        if !backend.built() {
            return Err(Error::Distributed(format!(
                "this build of dsno has no {} backend: its headers were missing when it was built (run scripts/setup.sh, then rebuild)",
                backend.name()
            )));
        }
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| Error::Distributed("MASTER_ADDR holds a NUL byte".into()))?;
        let prefix = if launch.agent_store {
            format!("/worker/attempt_{}/dsno/", launch.restart)
        } else {
            "dsno/".to_string()
        };
        let prefix = CString::new(prefix).expect("no NUL in the prefix");
        let interfaces = CString::new(launch.gloo_interfaces.clone().unwrap_or_default())
            .map_err(|_| Error::Distributed("GLOO_SOCKET_IFNAME holds a NUL byte".into()))?;
        let dev = match device {
            Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid C strings for the call's duration; err is an out-pointer.
        let ptr = unsafe {
            dsno_comm_new(
                host.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world_size as c_int,
                (launch.rank == 0 && !launch.agent_store) as c_int,
                prefix.as_ptr(),
                timeout.as_millis().min(i64::MAX as u128) as c_longlong,
                (backend == Backend::Nccl) as c_int,
                dev,
                interfaces.as_ptr(),
                &mut err,
            )
        };
        let what = format!(
            "rank {} of {} joining the {} group at {}:{}",
            launch.rank,
            launch.world_size,
            backend.name(),
            launch.master_addr,
            launch.master_port
        );
        check(if ptr.is_null() { 1 } else { 0 }, err, &what)?;
        Ok(Comm {
            group: Some(Arc::new(Group(ptr))),
            rank: launch.rank,
            world: launch.world_size,
            device,
            backend,
            timeout,
        })
    }

    /// What a failed collective says: which, where, and the likely cause.
    fn failed(&self, op: &str) -> String {
        format!(
            "{op} on rank {} of {} failed: another rank died, or did not answer within the {} s timeout",
            self.rank,
            self.world,
            self.timeout.as_secs_f64()
        )
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Rank 0: the process that logs, draws progress and writes checkpoints.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The device of the group's tensors (CUDA for NCCL, the CPU for Gloo).
    pub fn device(&self) -> Device {
        self.device
    }

    /// This rank's rows of a global batch of `n`: the `rank`-th of `world` equal parts. The
    /// global batch must divide evenly, so that the mean of the ranks' mean gradients is the
    /// full batch's mean gradient.
    pub fn part(&self, n: usize) -> Result<Range<usize>> {
        if !n.is_multiple_of(self.world) {
            return Err(Error::invalid(format!(
                "batch size {n} does not divide into {} equal parts, one per process",
                self.world
            )));
        }
        let k = n / self.world;
        Ok(self.rank * k..(self.rank + 1) * k)
    }

    fn handle(&self) -> Option<*mut c_void> {
        self.group.as_ref().map(|g| g.0)
    }

    fn check_tensor(&self, t: &Tensor, what: &str) -> Result<()> {
        let on_device = match self.backend {
            Backend::Nccl => t.device().is_cuda(),
            Backend::Gloo => t.device() == Device::Cpu,
        };
        if !on_device || !t.is_contiguous() {
            return Err(Error::Distributed(format!(
                "{what}: a contiguous tensor on the {} group's device was expected, got {:?} ({})",
                self.backend.name(),
                t.device(),
                if t.is_contiguous() {
                    "contiguous"
                } else {
                    "not contiguous"
                }
            )));
        }
        Ok(())
    }

    /// Sums `t` over the ranks, in place.
    pub fn all_reduce_sum_(&self, t: &mut Tensor) -> Result<()> {
        let Some(g) = self.handle() else {
            return Ok(());
        };
        self.check_tensor(t, "all-reduce")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: g is a live group; t is a live at::Tensor handle.
        let s = unsafe { dsno_comm_all_reduce_sum(g, t.as_mut_ptr() as *mut c_void, &mut err) };
        check(s, err, &self.failed("all-reduce"))
    }

    /// Averages `t` over the ranks, in place.
    pub fn all_reduce_mean_(&self, t: &mut Tensor) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        self.all_reduce_sum_(t)?;
        let _g = tch::no_grad_guard();
        let _ = t.f_div_scalar_(self.world as f64)?;
        Ok(())
    }

    /// Averages a flat (1-D, contiguous) tensor over the ranks in buckets of `bucket` elements,
    /// as DistributedDataParallel averages gradients.
    pub fn all_reduce_mean_flat(&self, flat: &Tensor, bucket: i64) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        let n = flat.numel() as i64;
        let mut off = 0;
        while off < n {
            let mut part = flat.narrow(0, off, bucket.min(n - off));
            self.all_reduce_mean_(&mut part)?;
            off += bucket;
        }
        Ok(())
    }

    /// Replaces `t` by rank `root`'s, in place.
    pub fn broadcast_(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let Some(g) = self.handle() else {
            return Ok(());
        };
        self.check_tensor(t, "broadcast")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: g is a live group; t is a live at::Tensor handle.
        let s = unsafe {
            dsno_comm_broadcast(g, t.as_mut_ptr() as *mut c_void, root as c_int, &mut err)
        };
        check(s, err, &self.failed("broadcast"))
    }

    /// Returns when every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let Some(g) = self.handle() else {
            return Ok(());
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: g is a live group.
        let s = unsafe { dsno_comm_barrier(g, &mut err) };
        check(s, err, &self.failed("barrier"))
    }

    /// The mean over the ranks of host values (losses, flags): one small all-reduce.
    pub fn mean_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world == 1 || values.is_empty() {
            return Ok(values.to_vec());
        }
        let mut t = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce_mean_(&mut t)?;
        Ok(Vec::<f64>::try_from(
            &t.to_device(Device::Cpu).to_kind(Kind::Double),
        )?)
    }

    /// The sum over the ranks of host counts.
    pub fn sum_u64(&self, values: &[u64]) -> Result<Vec<u64>> {
        if self.world == 1 || values.is_empty() {
            return Ok(values.to_vec());
        }
        let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
        let mut t = Tensor::from_slice(&v).to_device(self.device);
        self.all_reduce_sum_(&mut t)?;
        let out = Vec::<i64>::try_from(&t.to_device(Device::Cpu))?;
        Ok(out.into_iter().map(|x| x as u64).collect())
    }

    /// Makes every variable of `vs` rank `root`'s (in name order): identical initial weights.
    pub fn broadcast_vars(&self, vs: &tch::nn::VarStore, root: usize) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, mut v) in vars {
            self.broadcast_(&mut v, root)?;
        }
        Ok(())
    }
}
