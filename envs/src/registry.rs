//! String IDs to env constructors, like `gym.make`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::bridge;
use crate::classic::{CartPole, MountainCar, Pendulum};
use crate::env::Env;
use crate::error::{EnvError, Result};
use crate::goal_regions::{GoalRegions, GoalSchedule};
use crate::gridworld::{GridWorld, KEY_DOOR_MAP, SIMPLE_MAP};
use crate::nonstationary::{
    BANDIT_REGIMES, CARTPOLE_REGIMES, Drift, DriftingBandit, NonStationaryCartPole, RegimeBandit,
    RegimeSchedule,
};
use crate::remote::{RemoteConfig, RemoteEnv, Transport};
use crate::wrappers::{ClipAction, TimeLimit};

/// A constructor for an exact ID.
pub type Constructor = Arc<dyn Fn() -> Result<Box<dyn Env>> + Send + Sync>;

/// A constructor for a prefix ID (`gym:`, `exec:`, `tcp:`); it gets the text after the prefix.
pub type PrefixConstructor = Arc<dyn Fn(&str) -> Result<Box<dyn Env>> + Send + Sync>;

/// A table of env constructors.
#[derive(Clone, Default)]
pub struct Registry {
    exact: BTreeMap<String, Constructor>,
    prefixes: BTreeMap<String, PrefixConstructor>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

fn boxed<E: Env + 'static>(e: E) -> Box<dyn Env> {
    Box::new(e)
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// All built-in IDs. Native envs get the time limits `gym.make` gives them.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        let mut add = |ids: &[&str], c: Constructor| {
            for id in ids {
                r.exact.insert((*id).to_string(), c.clone());
            }
        };
        add(
            &["cartpole", "CartPole-v1"],
            Arc::new(|| Ok(boxed(TimeLimit::new(CartPole::new(), 500)?))),
        );
        add(
            &["mountaincar", "MountainCar-v0"],
            Arc::new(|| Ok(boxed(TimeLimit::new(MountainCar::new(), 200)?))),
        );
        add(
            &["pendulum", "Pendulum-v1"],
            Arc::new(|| Ok(boxed(TimeLimit::new(Pendulum::new(), 200)?))),
        );
        add(
            &["pendulum-clip", "Pendulum-v1-clip"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    ClipAction::new(Pendulum::new()),
                    200,
                )?))
            }),
        );
        add(
            &["cartpole-nonstationary", "CartPoleNonStationary-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    NonStationaryCartPole::pole_length_cycle(20_000)?,
                    500,
                )?))
            }),
        );
        add(
            &["bandit", "Bandit-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    DriftingBandit::new(10, Drift::RandomWalk { sigma: 0.01 }, 1.0)?,
                    100,
                )?))
            }),
        );
        add(
            &["bandit-abrupt", "BanditAbrupt-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    DriftingBandit::new(10, Drift::Abrupt { every: 5_000 }, 1.0)?,
                    100,
                )?))
            }),
        );
        add(
            &["goal-regions", "GoalRegions-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    GoalRegions::new(GoalSchedule::Constant(0))?,
                    100,
                )?))
            }),
        );
        add(
            &["goal-regions-cycle", "GoalRegionsCycle-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    GoalRegions::new(GoalSchedule::returning_cycle(20_000))?,
                    100,
                )?))
            }),
        );
        add(
            &["gridworld", "GridWorld-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    GridWorld::from_ascii(SIMPLE_MAP)?,
                    100,
                )?))
            }),
        );
        add(
            &["gridworld-key", "GridWorldKey-v0"],
            Arc::new(|| {
                Ok(boxed(TimeLimit::new(
                    GridWorld::from_ascii(KEY_DOOR_MAP)?,
                    200,
                )?))
            }),
        );
        // `goal-regions:B` holds regime B for good (the continual benchmark's fresh-start
        // baseline); `goal-regions:cycle:N` is the returning cycle with phases of N steps.
        r.prefixes.insert(
            "goal-regions:".into(),
            Arc::new(|spec: &str| {
                let schedule = goal_regions_schedule(spec)?;
                Ok(boxed(TimeLimit::new(GoalRegions::new(schedule)?, 100)?))
            }),
        );
        // The same lettered regimes and returning cycle for CartPole (A standard, B motor
        // reversed, C long heavy pole; 500-step episodes) and for a 10-armed bandit with fixed
        // means per regime (100-pull episodes, unit reward noise like `bandit`).
        r.prefixes.insert(
            "cartpole-regimes:".into(),
            Arc::new(|spec: &str| {
                let schedule = RegimeSchedule::parse("cartpole-regimes", spec, CARTPOLE_REGIMES)?;
                Ok(boxed(TimeLimit::new(
                    NonStationaryCartPole::regimes(schedule)?,
                    500,
                )?))
            }),
        );
        r.prefixes.insert(
            "bandit-regimes:".into(),
            Arc::new(|spec: &str| {
                let schedule = RegimeSchedule::parse("bandit-regimes", spec, BANDIT_REGIMES)?;
                Ok(boxed(TimeLimit::new(
                    RegimeBandit::new(schedule, 1.0)?,
                    100,
                )?))
            }),
        );
        r.prefixes.insert(
            "gym:".into(),
            Arc::new(|id: &str| {
                Ok(boxed(RemoteEnv::connect(
                    bridge::gym_transport(id)?,
                    bridge::gym_config(),
                )?))
            }),
        );
        r.prefixes.insert(
            "exec:".into(),
            Arc::new(|cmd: &str| {
                Ok(boxed(RemoteEnv::connect(
                    Transport::exec(cmd)?,
                    RemoteConfig::default(),
                )?))
            }),
        );
        r.prefixes.insert(
            "tcp:".into(),
            Arc::new(|addr: &str| {
                Ok(boxed(RemoteEnv::connect(
                    Transport::Tcp {
                        addr: addr.to_string(),
                    },
                    RemoteConfig::default(),
                )?))
            }),
        );
        r
    }

    /// Registers `id`; an ID taken already is an error (silently shadowing a world would make
    /// experiments lie).
    pub fn register<F>(&mut self, id: &str, ctor: F) -> Result<()>
    where
        F: Fn() -> Result<Box<dyn Env>> + Send + Sync + 'static,
    {
        if self.exact.contains_key(id) || self.prefixes.keys().any(|p| id.starts_with(p.as_str())) {
            return Err(EnvError::DuplicateId(id.to_string()));
        }
        self.exact.insert(id.to_string(), Arc::new(ctor));
        Ok(())
    }

    /// Registers a prefix such as `"myworld:"`; `make("myworld:xyz")` calls `ctor("xyz")`.
    pub fn register_prefix<F>(&mut self, prefix: &str, ctor: F) -> Result<()>
    where
        F: Fn(&str) -> Result<Box<dyn Env>> + Send + Sync + 'static,
    {
        if prefix.is_empty() || self.prefixes.contains_key(prefix) {
            return Err(EnvError::DuplicateId(prefix.to_string()));
        }
        self.prefixes.insert(prefix.to_string(), Arc::new(ctor));
        Ok(())
    }

    /// Builds the env registered under `id`.
    pub fn make(&self, id: &str) -> Result<Box<dyn Env>> {
        if let Some(c) = self.exact.get(id) {
            return c();
        }
        for (p, c) in &self.prefixes {
            if let Some(rest) = id.strip_prefix(p.as_str()) {
                return c(rest);
            }
        }
        Err(EnvError::UnknownId {
            id: id.to_string(),
            known: self.ids().join(", "),
        })
    }

    /// Known exact IDs, then prefixes shown as `gym:<id>` etc.
    pub fn ids(&self) -> Vec<String> {
        let hint = |p: &str| match p {
            "gym:" => "gym:<GymnasiumId>".to_string(),
            "exec:" => "exec:<command line>".to_string(),
            "tcp:" => "tcp:<host:port>".to_string(),
            other => format!("{other}<arg>"),
        };
        self.exact
            .keys()
            .cloned()
            .chain(self.prefixes.keys().map(|p| hint(p)))
            .collect()
    }
}

fn global() -> &'static RwLock<Registry> {
    static REG: OnceLock<RwLock<Registry>> = OnceLock::new();
    REG.get_or_init(|| RwLock::new(Registry::with_builtins()))
}

/// Builds an env from the process-wide registry (built-ins plus everything `register`ed).
pub fn make(id: &str) -> Result<Box<dyn Env>> {
    // Clone the constructor out so a slow constructor (a Python import) holds no lock.
    let reg = global().read().unwrap_or_else(|e| e.into_inner()).clone();
    reg.make(id)
}

/// Registers a constructor in the process-wide registry.
pub fn register<F>(id: &str, ctor: F) -> Result<()>
where
    F: Fn() -> Result<Box<dyn Env>> + Send + Sync + 'static,
{
    global()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .register(id, ctor)
}

/// IDs known to the process-wide registry.
pub fn known_ids() -> Vec<String> {
    global().read().unwrap_or_else(|e| e.into_inner()).ids()
}

/// The schedule a `goal-regions:<spec>` ID names: a regime letter (`A`..`Z`) held for good, or
/// `cycle:<steps>`, the returning cycle A → B → A → B → C → A with phases of that many steps.
fn goal_regions_schedule(spec: &str) -> Result<GoalSchedule> {
    if let Some(every) = spec.strip_prefix("cycle:") {
        let every: u64 = every.parse().map_err(|_| {
            EnvError::Config(format!(
                "`goal-regions:cycle:{every}`: the phase length must be a whole number of steps"
            ))
        })?;
        return Ok(GoalSchedule::returning_cycle(every));
    }
    let mut chars = spec.chars();
    match (chars.next(), chars.next()) {
        (Some(c @ 'A'..='Z'), None) => Ok(GoalSchedule::Constant(c as usize - 'A' as usize)),
        _ => Err(EnvError::Config(format!(
            "`goal-regions:{spec}`: expected a regime letter (`goal-regions:B`) or \
             `goal-regions:cycle:<steps per phase>`"
        ))),
    }
}
