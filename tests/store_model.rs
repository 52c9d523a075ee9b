//! Model-based store test: random sequences of create/update/delete/token/restart applied to
//! the real store and to plain in-memory maps; after every step and every restart, they agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse::clock::{ManualClock, SharedClock};
use gatehouse::events::NewEvent;
use gatehouse::rooms::{Privacy, RoomError};
use gatehouse::store::{
    CreateRoom, CreateToken, DeleteRoom, RoomCursor, Store, StoreOptions, SyncMode, TokenRecord, UpdateRoom,
};
use rand::{RngExt, SeedableRng};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
struct ModelRoom {
    private: bool,
    config: Map<String, Value>,
}

struct Model {
    rooms: BTreeMap<String, ModelRoom>,
    tokens: BTreeMap<String, Option<String>>,
    events: u64,
}

fn open(path: &std::path::Path, clock: SharedClock) -> Store {
    Store::open(
        StoreOptions {
            path: path.to_path_buf(),
            cache_bytes: 8 << 20,
            background_flush_ms: None,
            sync: SyncMode::Flush,
            public_url: "http://x".into(),
            lease_ms: 30_000,
            queue: 4096,
            shed_after: std::time::Duration::from_secs(60),
            stall_after: std::time::Duration::from_secs(30),
        },
        clock,
    )
    .unwrap()
}

fn random_config(rng: &mut impl rand::Rng) -> Map<String, Value> {
    let mut m = Map::new();
    if rng.random_bool(0.5) {
        m.insert("max_participants".into(), json!(rng.random_range(1..50)));
    }
    if rng.random_bool(0.3) {
        m.insert("enable_chat".into(), json!(rng.random_bool(0.5)));
    }
    m
}

async fn check_all(store: &Store, model: &Model) {
    let listed = store.list_rooms(10_000, &RoomCursor::First).unwrap().unwrap();
    let got: BTreeMap<String, ModelRoom> = listed
        .into_iter()
        .map(|r| (r.name.clone(), ModelRoom { private: r.privacy == Privacy::Private, config: r.config }))
        .collect();
    assert_eq!(got, model.rooms);
    assert_eq!(store.room_count().unwrap(), model.rooms.len() as u64);
    for (jti, room) in &model.tokens {
        assert_eq!(store.token(jti).unwrap().map(|t| t.room), Some(room.clone()));
    }
    assert_eq!(store.durable_seq(), model.events);
    let page = store.events(0, 100_000, None).unwrap();
    assert_eq!(page.events.len() as u64, model.events);
    for (i, e) in page.events.iter().enumerate() {
        let v: Value = serde_json::from_str(&e.envelope).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
    }
}

async fn run(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut store = open(&path, clock.clone());
    let mut model = Model { rooms: BTreeMap::new(), tokens: BTreeMap::new(), events: 0 };
    let names = ["a", "b", "c", "d", "e"];
    for step in 0..250 {
        clock.set_ms(1_800_000_000_000 + step * 1000);
        let name = names[rng.random_range(0..names.len())].to_string();
        match rng.random_range(0..10) {
            0..=2 => {
                let config = random_config(&mut rng);
                let private = rng.random_bool(0.5);
                let privacy = if private { Privacy::Private } else { Privacy::Public };
                let out = store
                    .submit(CreateRoom { name: Some(name.clone()), privacy, config: config.clone() })
                    .await
                    .unwrap();
                if model.rooms.contains_key(&name) {
                    assert!(matches!(out, Err(RoomError::NameTaken(_))), "{out:?}");
                } else {
                    assert!(out.is_ok());
                    model.rooms.insert(name, ModelRoom { private, config });
                    model.events += 1;
                }
            }
            3..=4 => {
                let mut patch = random_config(&mut rng);
                if rng.random_bool(0.5) {
                    patch.insert("max_participants".into(), Value::Null);
                }
                let out =
                    store.submit(UpdateRoom { name: name.clone(), privacy: None, patch: patch.clone() }).await.unwrap();
                match model.rooms.get_mut(&name) {
                    None => assert!(matches!(out, Err(RoomError::NotFound))),
                    Some(r) => {
                        assert!(out.is_ok());
                        for (k, v) in patch {
                            if v.is_null() {
                                r.config.remove(&k);
                            } else {
                                r.config.insert(k, v);
                            }
                        }
                        model.events += 1;
                    }
                }
            }
            5..=6 => {
                let out = store.submit(DeleteRoom { name: name.clone(), by: "test".into() }).await.unwrap();
                if model.rooms.remove(&name).is_some() {
                    assert!(out.is_ok());
                    model.events += 1;
                } else {
                    assert!(matches!(out, Err(RoomError::NotFound)));
                }
            }
            7..=8 => {
                let jti = uuid::Uuid::now_v7().to_string();
                let room = rng.random_bool(0.7).then(|| name.clone());
                let record = TokenRecord {
                    jti: jti.clone(),
                    kid: "k".into(),
                    room: room.clone(),
                    user_id: None,
                    user_name: None,
                    is_owner: false,
                    nbf: None,
                    exp: None,
                    created_ms: 0,
                };
                store
                    .submit(CreateToken { record, event: NewEvent::new("meeting-token.created", json!({"jti": jti})) })
                    .await
                    .unwrap();
                model.tokens.insert(jti, room);
                model.events += 1;
            }
            _ => {
                store.close().await;
                drop(store);
                store = open(&path, clock.clone());
                check_all(&store, &model).await;
            }
        }
        check_all(&store, &model).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_behaves_like_maps_across_restarts() {
    for seed in 0..6 {
        run(seed).await;
    }
}
