//! The benchmark data set, modelled on .NET Opossum's course-management sample: courses created, students
//! registered, then a mix of enrollments, subscription changes and course capacity changes, tagged `courseId` and
//! `studentId` as the sample tags them. Every event is a pure function of its index, so seeders can generate any
//! range on any thread and two runs with the same parameters write the same store (timestamps aside).

use opossum::model::{Event, Query, QueryItem, Tag};
use opossum::projection::Put;

pub const COURSE_CREATED: &str = "CourseCreatedEvent";
pub const STUDENT_REGISTERED: &str = "StudentRegisteredEvent";
pub const STUDENT_ENROLLED: &str = "StudentEnrolledToCourseEvent";
pub const SUBSCRIPTION_UPDATED: &str = "StudentSubscriptionUpdatedEvent";
pub const COURSE_LIMIT_MODIFIED: &str = "CourseStudentLimitModifiedEvent";

/// The projection the sample's StudentShortInfo read model is stored under.
pub const STUDENT_SHORT_INFO: &str = "StudentShortInfo";
/// The event types the StudentShortInfo projection folds.
pub const STUDENT_SHORT_INFO_TYPES: [&str; 3] = [STUDENT_REGISTERED, STUDENT_ENROLLED, SUBSCRIPTION_UPDATED];
pub const TIERS: [&str; 4] = ["Basic", "Standard", "Professional", "Master"];

const FIRST: [&str; 8] = ["Anna", "Bob", "Chloé", "Dávid", "Eve", "Farkas", "Greta", "Hiroshi"];
const LAST: [&str; 8] = ["Kovács", "Smith", "O'Brien", "Nagy", "Müller", "Tanaka", "Rossi", "Dubois"];
const SUBJECTS: [&str; 8] =
    ["Algebra", "Biology", "Chemistry", "Databases", "Economics", "French", "Geology", "History"];

/// splitmix64: a fast, well-mixed deterministic hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small deterministic generator for choices made while running (which student to query, ...).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub fn student_id(i: u64) -> String {
    format!("{:08x}-5f7c-4c53-9a55-{:012x}", i, mix(i) & 0xffff_ffff_ffff)
}

pub fn course_id(i: u64) -> String {
    format!("{:08x}-1111-4d2a-8f00-{:012x}", i, mix(i ^ 0xc0) & 0xffff_ffff_ffff)
}

pub fn student_tag(i: u64) -> Tag {
    Tag::new("studentId", student_id(i))
}

pub fn course_tag(i: u64) -> Tag {
    Tag::new("courseId", course_id(i))
}

pub fn student_query(i: u64) -> Query {
    Query::Items(vec![QueryItem { types: Vec::new(), tags: vec![student_tag(i)] }])
}

pub fn course_query(i: u64) -> Query {
    Query::Items(vec![QueryItem { types: Vec::new(), tags: vec![course_tag(i)] }])
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DataSet {
    pub events: u64,
    pub students: u64,
    pub courses: u64,
}

impl DataSet {
    /// Event number `n` (0-based; it lands at position `n + 1` when seeded in order).
    pub fn event(&self, n: u64) -> Event {
        let h = mix(n ^ 0x5eed);
        if n < self.courses {
            return course_created(n, h);
        }
        if n < self.courses + self.students {
            return student_registered(n - self.courses);
        }
        let student = (h >> 8) % self.students.max(1);
        let course = (h >> 40) % self.courses.max(1);
        match h % 100 {
            0..=84 => enrolled(course, student),
            85..=94 => {
                let tier = TIERS[((h >> 20) % 4) as usize];
                let data = format!(r#"{{"studentId":"{}","enrollmentTier":"{tier}"}}"#, student_id(student));
                Event::new(SUBSCRIPTION_UPDATED, &data, vec![student_tag(student)]).expect("valid event")
            }
            _ => {
                let limit = 10 + (h >> 20) % 90;
                let data = format!(r#"{{"courseId":"{}","newStudentLimit":{limit}}}"#, course_id(course));
                Event::new(COURSE_LIMIT_MODIFIED, &data, vec![course_tag(course)]).expect("valid event")
            }
        }
    }
}

fn course_created(i: u64, h: u64) -> Event {
    let subject = SUBJECTS[(i % 8) as usize];
    let data = format!(
        r#"{{"courseId":"{}","name":"{subject} {}","description":"An introduction to {subject}, section {i}: lectures, labs and a final project.","studentLimit":{}}}"#,
        course_id(i),
        100 + i % 400,
        10 + h % 90
    );
    Event::new(COURSE_CREATED, &data, vec![course_tag(i)]).expect("valid event")
}

fn student_registered(i: u64) -> Event {
    let (first, last) = (FIRST[(i % 8) as usize], LAST[((i / 8) % 8) as usize]);
    let data = format!(
        r#"{{"studentId":"{}","firstName":"{first}","lastName":"{last}","email":"student{i}@example.com"}}"#,
        student_id(i)
    );
    Event::new(STUDENT_REGISTERED, &data, vec![student_tag(i)]).expect("valid event")
}

pub fn enrolled(course: u64, student: u64) -> Event {
    let data = format!(r#"{{"courseId":"{}","studentId":"{}"}}"#, course_id(course), student_id(student));
    Event::new(STUDENT_ENROLLED, &data, vec![course_tag(course), student_tag(student)]).expect("valid event")
}

/// The JSON data of event `i` for the append and tag-query workloads that compare stores (the peer benchmark, the
/// wire example): one shape, 300–500 bytes, deterministic.
pub fn sized_data(i: u64) -> String {
    let h = mix(i);
    let mut data = format!(
        r#"{{"studentId":"{}","courseId":"{}","enrolledAt":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z","seat":{i},"note":""#,
        student_id(h % 1_000_000),
        course_id((h >> 20) % 10_000),
        1 + (h >> 8) % 28,
        (h >> 13) % 24,
        (h >> 18) % 60,
        (h >> 24) % 60,
        (h >> 30) % 1000
    );
    let size = SIZED_DATA_MIN + (h >> 40) as usize % (SIZED_DATA_MAX - SIZED_DATA_MIN);
    let filler = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    while data.len() + 2 < size {
        let take = (size - 2 - data.len()).min(filler.len());
        data.push_str(&filler[..take]);
    }
    data.push_str("\"}");
    data
}

/// Bounds of [`sized_data`]'s length in bytes.
pub const SIZED_DATA_MIN: usize = 300;
pub const SIZED_DATA_MAX: usize = 500;

/// The StudentShortInfo read model of the sample, folded from a student's events.
#[derive(Debug, Clone, Default)]
pub struct StudentShortInfo {
    pub student_id: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub tier: usize,
    pub enrollments: u64,
}

impl StudentShortInfo {
    pub fn max_enrollments(&self) -> u64 {
        [5, 10, 25, 100][self.tier.min(3)]
    }

    /// The state as .NET Opossum serialises it (PascalCase).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "StudentId": self.student_id,
            "FirstName": self.first_name,
            "LastName": self.last_name,
            "Email": self.email,
            "EnrollmentTier": TIERS[self.tier.min(3)],
            "CurrentEnrollmentCount": self.enrollments,
            "MaxEnrollmentCount": self.max_enrollments(),
            "IsMaxedOut": self.enrollments >= self.max_enrollments(),
        })
        .to_string()
    }

    /// The `put` of this state under `key` (the student id), with its [`tags`](Self::tags).
    pub fn to_put(&self, key: &str) -> Put {
        Put {
            projection: STUDENT_SHORT_INFO.into(),
            key: key.into(),
            state: serde_json::value::RawValue::from_string(self.to_json()).expect("valid JSON"),
            tags: self.tags(),
            expected_version: None,
        }
    }

    pub fn tags(&self) -> Vec<Tag> {
        vec![
            Tag::new("EnrollmentTier", TIERS[self.tier.min(3)]),
            Tag::new("IsMaxedOut", if self.enrollments >= self.max_enrollments() { "true" } else { "false" }),
        ]
    }

    /// A freshly registered student `i` (used to populate the `get_all` workload's projection).
    pub fn registered(i: u64) -> StudentShortInfo {
        StudentShortInfo {
            student_id: student_id(i),
            first_name: FIRST[(i % 8) as usize].into(),
            last_name: LAST[((i / 8) % 8) as usize].into(),
            email: format!("student{i}@example.com"),
            tier: (i % 4) as usize,
            enrollments: i % 7,
        }
    }

    /// Applies one event's data (as JSON text) of type `event_type`.
    pub fn apply(&mut self, event_type: &str, data: &str) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            #[serde(default)]
            student_id: String,
            #[serde(default)]
            first_name: String,
            #[serde(default)]
            last_name: String,
            #[serde(default)]
            email: String,
            #[serde(default)]
            enrollment_tier: String,
        }
        let Ok(d) = serde_json::from_str::<Data>(data) else { return };
        match event_type {
            STUDENT_REGISTERED => {
                self.student_id = d.student_id;
                self.first_name = d.first_name;
                self.last_name = d.last_name;
                self.email = d.email;
            }
            STUDENT_ENROLLED => self.enrollments += 1,
            SUBSCRIPTION_UPDATED => self.tier = TIERS.iter().position(|t| *t == d.enrollment_tier).unwrap_or(0),
            _ => {}
        }
    }
}

/// StudentShortInfo projection number `i`: a freshly registered student's state (~300 B of JSON, two tags), keyed
/// by the student's id. The one generator of projections for every benchmark.
pub fn student_short_info(i: u64) -> Put {
    let state = StudentShortInfo::registered(i);
    state.to_put(&state.student_id)
}

/// Event `n` of the open/stop benchmarks: five types, a tag of its own (a million distinct tags at 1M events, the
/// index's worst case) and one of 97 shared ones.
pub fn distinct_tag_event(n: u64) -> Event {
    let data = format!(
        r#"{{"studentId":"s-{n}","courseId":"c-{}","note":"a typical small payload of some sixty bytes"}}"#,
        n % 97
    );
    Event::new(
        &format!("StudentEvent{}", n % 5),
        &data,
        vec![Tag::new("studentId", format!("s-{n}")), Tag::new("courseId", format!("c-{}", n % 97))],
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_deterministic_and_valid() {
        let set = DataSet { events: 5_000, students: 100, courses: 20 };
        for n in 0..set.events {
            let (a, b) = (set.event(n), set.event(n));
            assert_eq!(a.event_type, b.event_type);
            assert_eq!(a.data.get(), b.data.get());
            opossum::model::validate_event(&a).unwrap();
        }
        assert_eq!(set.event(0).event_type, COURSE_CREATED);
        assert_eq!(set.event(20).event_type, STUDENT_REGISTERED);
    }

    #[test]
    fn folds_student_short_info() {
        let mut s = StudentShortInfo::default();
        s.apply(STUDENT_REGISTERED, student_registered(7).data.get());
        s.apply(STUDENT_ENROLLED, enrolled(1, 7).data.get());
        s.apply(SUBSCRIPTION_UPDATED, r#"{"studentId":"x","enrollmentTier":"Master"}"#);
        assert_eq!(s.student_id, student_id(7));
        assert_eq!((s.enrollments, s.tier), (1, 3));
        let state: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(state["MaxEnrollmentCount"], 100);
    }

    #[test]
    fn sized_data_is_json_of_the_promised_size() {
        for i in 0..2_000 {
            let data = sized_data(i);
            assert!((SIZED_DATA_MIN..=SIZED_DATA_MAX).contains(&data.len()), "{} bytes: {data}", data.len());
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["seat"], i);
        }
        assert_eq!(sized_data(5), sized_data(5));
    }

    #[test]
    fn student_short_info_is_keyed_and_tagged() {
        let put = student_short_info(7);
        assert_eq!((put.projection.as_str(), put.key.as_str()), (STUDENT_SHORT_INFO, student_id(7).as_str()));
        let state: serde_json::Value = serde_json::from_str(put.state.get()).unwrap();
        assert_eq!(state["StudentId"], student_id(7));
        assert_eq!(put.tags.len(), 2);
        assert_ne!(student_short_info(8).key, put.key);
    }
}
