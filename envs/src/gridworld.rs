//! A small grid world (walls, goal, optional key and door) for fast learning tests.

use serde_json::json;

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, Result};
use crate::space::{Action, Space};

/// An open 5×5 maze: reach `G` from `S`.
pub const SIMPLE_MAP: &str = "S....\n.###.\n...#.\n.#...\n...#G";

/// A key-and-door maze: fetch `K`, pass the door `D` (closed without the key), reach `G`.
pub const KEY_DOOR_MAP: &str = "S..#...\n...D...\nK..#..G";

/// A grid world read from ASCII: `#` wall, `.` floor, `S` start, `G` goal, `K` key, `D` door.
///
/// Actions: 0 up, 1 right, 2 down, 3 left; bumping into a wall, the edge or a locked door
/// leaves the agent in place. Reaching the goal pays `goal_reward` and terminates; every other
/// step pays `step_reward`. The observation is a one-hot of the agent's cell followed by a
/// has-key flag, which tabular and neural learners both pick up fast.
#[derive(Clone, Debug)]
pub struct GridWorld {
    width: usize,
    height: usize,
    walls: Vec<bool>,
    start: usize,
    goal: usize,
    key: Option<usize>,
    door: Option<usize>,
    pos: Option<usize>,
    has_key: bool,
    /// Reward for reaching the goal.
    pub goal_reward: f64,
    /// Reward for every other step.
    pub step_reward: f64,
    obs_space: Space,
    act_space: Space,
}

impl GridWorld {
    /// Parses a map; it needs exactly one `S` and one `G`, at most one `K` and `D`, equal
    /// row lengths, and fewer than [`MAX_SPACE_ELEMENTS`](crate::space::MAX_SPACE_ELEMENTS)
    /// cells.
    pub fn from_ascii(map: &str) -> Result<Self> {
        let rows: Vec<&str> = map
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let height = rows.len();
        let width = rows.first().map_or(0, |r| r.chars().count());
        if height == 0 || width == 0 || rows.iter().any(|r| r.chars().count() != width) {
            return Err(EnvError::Config(
                "grid map must be a non-empty rectangle".into(),
            ));
        }
        // One observation element per cell (plus the key flag): bounded like any Box.
        if width.saturating_mul(height) >= crate::space::MAX_SPACE_ELEMENTS {
            return Err(EnvError::Config(format!(
                "grid of {width}×{height} cells exceeds the limit of {} observation elements",
                crate::space::MAX_SPACE_ELEMENTS
            )));
        }
        let (mut start, mut goal, mut key, mut door) = (None, None, None, None);
        let mut walls = vec![false; width * height];
        for (r, row) in rows.iter().enumerate() {
            for (c, ch) in row.chars().enumerate() {
                let i = r * width + c;
                let slot = match ch {
                    '#' => {
                        walls[i] = true;
                        continue;
                    }
                    '.' => continue,
                    'S' => &mut start,
                    'G' => &mut goal,
                    'K' => &mut key,
                    'D' => &mut door,
                    other => return Err(EnvError::Config(format!("unknown grid cell `{other}`"))),
                };
                if slot.replace(i).is_some() {
                    return Err(EnvError::Config(format!("grid has more than one `{ch}`")));
                }
            }
        }
        let (Some(start), Some(goal)) = (start, goal) else {
            return Err(EnvError::Config("grid needs an `S` and a `G`".into()));
        };
        let n = width * height + 1;
        Ok(Self {
            width,
            height,
            walls,
            start,
            goal,
            key,
            door,
            pos: None,
            has_key: false,
            goal_reward: 1.0,
            step_reward: 0.0,
            obs_space: Space::uniform_box(0.0, 1.0, vec![n]),
            act_space: Space::Discrete { n: 4 },
        })
    }

    /// `(row, column)` of the agent, if reset.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.pos.map(|p| (p / self.width, p % self.width))
    }

    fn obs(&self, pos: usize) -> Observation {
        let mut o = vec![0.0; self.width * self.height + 1];
        o[pos] = 1.0;
        o[self.width * self.height] = if self.has_key { 1.0 } else { 0.0 };
        o
    }

    fn info(&self, pos: usize) -> Info {
        let mut i = Info::new();
        i.insert("pos".into(), json!([pos / self.width, pos % self.width]));
        i.insert("has_key".into(), json!(self.has_key));
        i
    }
}

impl Env for GridWorld {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }
    /// The world is deterministic; the seed is accepted for interface uniformity.
    fn reset(&mut self, _seed: Option<u64>) -> Result<(Observation, Info)> {
        self.pos = Some(self.start);
        self.has_key = false;
        Ok((self.obs(self.start), self.info(self.start)))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        let pos = self.pos.ok_or(EnvError::NeedsReset)?;
        let (r, c) = (pos / self.width, pos % self.width);
        let target = match action {
            Action::Discrete(0) if r > 0 => Some(pos - self.width),
            Action::Discrete(1) if c + 1 < self.width => Some(pos + 1),
            Action::Discrete(2) if r + 1 < self.height => Some(pos + self.width),
            Action::Discrete(3) if c > 0 => Some(pos - 1),
            _ => None,
        };
        let next = match target {
            Some(t) if self.walls[t] => pos,
            Some(t) if Some(t) == self.door && !self.has_key => pos,
            Some(t) => t,
            None => pos,
        };
        if Some(next) == self.key {
            self.has_key = true;
        }
        self.pos = Some(next);
        let terminated = next == self.goal;
        Ok(Step {
            obs: self.obs(next),
            reward: if terminated {
                self.goal_reward
            } else {
                self.step_reward
            },
            terminated,
            truncated: false,
            info: self.info(next),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_blocks_until_key_is_fetched() {
        let mut g = GridWorld::from_ascii(KEY_DOOR_MAP).unwrap();
        g.reset(None).unwrap();
        // Walk right along row 1 towards the door without the key: blocked at column 2.
        g.step(&Action::Discrete(2)).unwrap();
        for _ in 0..4 {
            g.step(&Action::Discrete(1)).unwrap();
        }
        assert_eq!(g.position(), Some((1, 2)));
        // Fetch the key at (2, 0), come back, pass the door, reach the goal.
        for a in [3, 3, 2] {
            g.step(&Action::Discrete(a)).unwrap();
        }
        assert_eq!(g.position(), Some((2, 0)));
        let mut last = None;
        for a in [0, 1, 1, 1, 1, 1, 1, 2] {
            last = Some(g.step(&Action::Discrete(a)).unwrap());
        }
        let last = last.unwrap();
        assert_eq!(g.position(), Some((2, 6)));
        assert!(last.terminated);
        assert_eq!(last.reward, 1.0);
    }

    #[test]
    fn bad_maps_are_config_errors() {
        assert!(GridWorld::from_ascii("S..\n..").is_err());
        assert!(GridWorld::from_ascii("S.X.G").is_err());
        assert!(GridWorld::from_ascii("S...").is_err());
    }
}
