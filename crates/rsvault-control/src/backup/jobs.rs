//! Backup job records (`…/backupJobs/{job}`): one per configure-backup, disable-backup, delete-data,
//! undelete, backup and restore action, stored in the `jobs` table in the same transaction as the
//! action they report.
//!
//! Jobs created by protection changes complete with the action; jobs of data-plane work (backup,
//! restore) are created `InProgress` and queued, and updated by the job engine (`rsvault_jobs`, through [`crate::jobwork`]).
//! Cancel and export are here too, with their operation records.

use super::JOB_TYPE;
use crate::{Control, Error, Result};
use chrono::{DateTime, Timelike, Utc};
use rsvault_core::odata::{Filter, Op};
use rsvault_core::time;
use rsvault_jobs::{CancelOutcome, JobStatus, Phase};
use rsvault_store::{JobQuery, JobRow, JobText, OperationRow, Page, ResourceRow};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What a new job is about.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// `ConfigureBackup`, `DisableBackup`, `DeleteBackupData`, `Undelete`, `Backup`, `Restore`, `Register` …
    pub operation: &'a str,
    /// `AzureIaasVM` or `AzureStorage`.
    pub backup_management_type: &'a str,
    /// The VM or share name.
    pub entity: &'a str,
    /// `iaasvmcontainerv2;rg;vm` or the storage container's short name.
    pub container: &'a str,
    pub property_bag: Map<String, Value>,
}

/// The `jobType` discriminator for a backup management type.
pub fn job_type(bmt: &str) -> &'static str {
    match bmt {
        "AzureStorage" => "AzureStorageJob",
        "AzureWorkload" => "AzureWorkloadJob",
        _ => "AzureIaaSVMJob",
    }
}

const STATUSES: &[&str] = &[
    "Invalid",
    "InProgress",
    "Completed",
    "Failed",
    "CompletedWithWarnings",
    "Cancelled",
    "Cancelling",
];
const OPERATIONS: &[&str] = &[
    "Invalid",
    "Register",
    "UnRegister",
    "ConfigureBackup",
    "Backup",
    "Restore",
    "DisableBackup",
    "DeleteBackupData",
    "CrossRegionRestore",
    "Undelete",
    "UpdateCustomerManagedKey",
];
const BMTS: &[&str] = &[
    "Invalid",
    "AzureIaasVM",
    "MAB",
    "DPM",
    "AzureBackupServer",
    "AzureSql",
    "AzureStorage",
    "AzureWorkload",
    "DefaultBackup",
];

fn filter_error(message: String) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidInput",
        message,
        target: Some("$filter".into()),
    }
}

/// A `$filter` time: Azure's `2016-01-01 12:00:00 AM` form, `01/15/2016 12:00:00 AM`, or ISO-8601 (UTC
/// when no offset is given).
pub fn parse_filter_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Some(t) = parse_with_time_mark(s) {
        return Some(t.and_utc());
    }
    const FORMS: &[&str] = &["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"];
    for f in FORMS {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A date and time with an `AM`/`PM` mark, read as .NET's `DateTime.Parse` reads it (Azure's own
/// examples write midnight `2016-01-01 00:00:00 AM`): with `AM` the hour is 0 to 12 (12 and 0 are
/// the midnight hour), with `PM` 0 to 23 (an hour below 12 gains 12, 12 to 23 stay).
fn parse_with_time_mark(s: &str) -> Option<chrono::NaiveDateTime> {
    let (rest, mark) = s.rsplit_once(' ')?;
    let pm = match mark {
        m if m.eq_ignore_ascii_case("AM") => false,
        m if m.eq_ignore_ascii_case("PM") => true,
        _ => return None,
    };
    let t = ["%Y-%m-%d %H:%M:%S", "%m/%d/%Y %H:%M:%S"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(rest.trim_end(), f).ok())?;
    let hour = t.hour();
    let hour = match (pm, hour) {
        (false, 12) => 0,
        (false, h) if h < 12 => h,
        (false, _) => return None,
        (true, h) if h < 12 => h + 12,
        (true, h) => h,
    };
    t.with_hour(hour)
}

/// A job `$filter`, checked: every value must be one Azure knows.
struct JobFilter {
    status: Option<&'static str>,
    operation: Option<&'static str>,
    bmt: Option<&'static str>,
    job_id: Option<String>,
    /// Jobs started in this window.
    window: Window,
}

/// A time window from a `$filter`'s start and end fields (`startTime`/`endTime` for jobs,
/// `startDate`/`endDate` for recovery points), in Azure's time forms. The start field bounds from
/// below and the end field from above; `eq` is inclusive, the other operators say what they mean.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    after: Option<(DateTime<Utc>, bool)>,
    before: Option<(DateTime<Utc>, bool)>,
}

impl Window {
    pub(crate) fn parse(f: &Filter, start: &str, end: &str) -> Result<Window> {
        let mut w = Window::default();
        for c in &f.clauses {
            let is_start = c.field.eq_ignore_ascii_case(start);
            if !is_start && !c.field.eq_ignore_ascii_case(end) {
                continue;
            }
            let t = parse_filter_time(&c.value).ok_or_else(|| {
                filter_error(format!(
                    "'{}' is not a valid {}: use 'yyyy-MM-dd hh:mm:ss AM' or ISO-8601.",
                    c.value, c.field
                ))
            })?;
            match (is_start, c.op) {
                (true, Op::Eq | Op::Ge) | (false, Op::Ge) => w.after = Some((t, true)),
                (_, Op::Gt) => w.after = Some((t, false)),
                (false, Op::Eq | Op::Le) | (true, Op::Le) => w.before = Some((t, true)),
                (_, Op::Lt) => w.before = Some((t, false)),
                (_, Op::Ne) => return Err(filter_error(format!("'{}' cannot be used with 'ne'.", c.field))),
            }
        }
        if let (Some((a, _)), Some((b, _))) = (w.after, w.before) {
            if a > b {
                return Err(filter_error(format!("The filter's {start} is later than its {end}.")));
            }
        }
        Ok(w)
    }

    pub(crate) fn contains(&self, t: DateTime<Utc>) -> bool {
        self.after.is_none_or(|(a, incl)| if incl { t >= a } else { t > a })
            && self.before.is_none_or(|(b, incl)| if incl { t <= b } else { t < b })
    }
}

impl JobFilter {
    fn parse(text: Option<&str>) -> Result<JobFilter> {
        let f = Filter::parse(text.unwrap_or_default())?;
        f.only(
            &[
                "status",
                "operation",
                "backupManagementType",
                "jobId",
                "startTime",
                "endTime",
            ],
            &["startTime", "endTime"],
        )?;
        let pick = |field: &str, allowed: &'static [&'static str]| -> Result<Option<&'static str>> {
            f.eq(field)
                .map(|v| {
                    allowed
                        .iter()
                        .find(|a| a.eq_ignore_ascii_case(v))
                        .copied()
                        .ok_or_else(|| {
                            filter_error(format!(
                                "'{v}' is not a valid {field}. Valid values: {}.",
                                allowed.join(", ")
                            ))
                        })
                })
                .transpose()
        };
        Ok(JobFilter {
            status: pick("status", STATUSES)?,
            operation: pick("operation", OPERATIONS)?,
            bmt: pick("backupManagementType", BMTS)?,
            job_id: f.eq("jobId").map(String::from),
            window: Window::parse(&f, "startTime", "endTime")?,
        })
    }

    /// The store's query for this filter (compared in the store, on the vault's job index).
    fn query(&self) -> JobQuery {
        JobQuery {
            status: self.status.map(String::from),
            operation: self.operation.map(String::from),
            backup_management_type: self.bmt.map(String::from),
            name: self.job_id.clone(),
            started_after: self.window.after,
            started_before: self.window.before,
        }
    }
}

/// How long a job export's download URL is valid, in minutes.
pub const EXPORT_URL_MINUTES: i64 = 60;
/// The type of the row that keeps a job export below its vault (rsvault's own; no route lists it).
const EXPORT_TYPE: &str = "rsvault/backupjobsexports";

fn export_id(vault: &str, op: &str) -> String {
    format!("{vault}/backupJobsExports/{op}")
}

impl Control {
    /// `GET …/backupJobs` with Azure's `$filter`, newest first, paged (`skip_after` is the key of the
    /// last job of the previous page).
    pub fn list_jobs(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        filter: Option<&str>,
        skip_after: Option<&str>,
    ) -> Result<Page<Arc<str>>> {
        let vault_id = self.vault_id_checked(sub, rg, vault)?;
        let q = JobFilter::parse(filter)?.query();
        let page = self
            .store
            .read_one(|db| db.jobs_page_text(&vault_id, &q, skip_after, self.settings.page_size))?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|j| self.job_wire_text(j))
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// A completed job (start = end = now) recording an action that finished with the request.
    pub(crate) fn completed_job(&self, vault: &ResourceRow, j: &NewJob) -> JobRow {
        let now = self.now();
        let name = uuid::Uuid::new_v4().to_string();
        let mut props = json!({
            "jobType": job_type(j.backup_management_type),
            "entityFriendlyName": j.entity,
            "backupManagementType": j.backup_management_type,
            "operation": j.operation,
            "status": "Completed",
            "startTime": time::timestamp(now),
            "endTime": time::timestamp(now),
            "duration": time::iso_duration(chrono::Duration::zero()),
            "activityId": uuid::Uuid::new_v4().to_string(),
            "extendedInfo": {"tasksList": [], "propertyBag": j.property_bag},
        });
        if j.backup_management_type == "AzureStorage" {
            props["storageAccountName"] = json!(j.container.rsplit(';').next().unwrap_or_default());
            props["storageAccountVersion"] = json!("Storage");
        } else {
            props["containerName"] = json!(j.container);
            props["virtualMachineVersion"] = json!("Compute");
        }
        JobRow {
            id: format!("{}/backupJobs/{name}", vault.id),
            vault_key: vault.id.to_ascii_lowercase(),
            name,
            operation: j.operation.to_string(),
            status: "Completed".into(),
            backup_management_type: j.backup_management_type.to_string(),
            entity: j.entity.to_string(),
            start: now,
            end: Some(now),
            body: props,
            phase: None,
            work: None,
        }
    }

    /// The wire body of a job; a running job's `duration` grows with the clock, as the live service's does.
    pub fn job_body(&self, j: &JobRow) -> Value {
        self.job_wire(j.clone())
    }

    /// [`Control::job_body`] of a row read for this answer (its body is taken, not copied).
    fn job_wire(&self, mut j: JobRow) -> Value {
        let mut props = std::mem::take(&mut j.body);
        let now = self.now();
        let end: DateTime<Utc> = j.end.unwrap_or(now);
        props["duration"] = json!(time::iso_duration(end - j.start));
        let cancellable =
            JobStatus::of(&j) == Some(JobStatus::InProgress) && Phase::of(&j).is_some_and(Phase::is_active);
        if cancellable {
            props["actionsInfo"] = json!(["Cancellable"]);
        } else if let Some(o) = props.as_object_mut() {
            o.remove("actionsInfo");
        }
        super::recovery::render_tasks(&mut props, now);
        json!({"id": j.id, "name": j.name, "type": JOB_TYPE, "properties": props})
    }

    /// The wire text of a job read with its body as stored text: the rendering kept for exactly this
    /// row if there is one ([`crate::wirecache`]), else rendered now (and kept if the job is settled).
    fn job_wire_text(&self, (mut row, text): JobText) -> Result<Arc<str>> {
        if let Some(wire) = self.job_wires.get(&row, &text) {
            return Ok(wire);
        }
        let key = row.clone();
        row.body = serde_json::from_str(&text).map_err(|e| Error::internal(format!("job {}: {e}", row.id)))?;
        let settled = settled(&row);
        let wire: Arc<str> = self.job_wire(row).to_string().into();
        if settled {
            self.job_wires.put(&key, text, wire.clone());
        }
        Ok(wire)
    }

    fn job_row(&self, vault_id: &str, vault: &str, name: &str) -> Result<JobRow> {
        let id = format!("{vault_id}/backupJobs/{name}");
        self.store
            .read_one(|db| db.job(&id))?
            .ok_or_else(|| job_not_found(vault, name))
    }

    /// `POST …/backupJobs/{job}/cancel`: a queued job is cancelled at once, a running one stops at its
    /// next chunk. Returns the operation id (its result URL is `backupJobs/{job}/operationResults/{op}`).
    pub fn cancel_job(&self, sub: &str, rg: &str, vault: &str, name: &str) -> Result<String> {
        let v = self.vault_row(sub, rg, vault)?;
        let j = self.job_row(&v.id, vault, name)?;
        let outcome = if Phase::of(&j).is_some() {
            self.cancel_job_run(&j.id)?
        } else {
            CancelOutcome::NotCancellable
        };
        if outcome == CancelOutcome::NotCancellable {
            return Err(Error::Invalid {
                code: "BMSUserErrorJobNotCancellable",
                message: format!(
                    "Job '{name}' cannot be cancelled: it is {} ({} jobs can be cancelled only while they are in progress).",
                    j.status, j.operation
                ),
                target: None,
            });
        }
        let op = self.finished_operation(&v, "CancelJob", Some(&j.id), None);
        self.store.write(|db| db.put_operation(&op))?;
        Ok(op.id)
    }

    /// An operation of a job (its cancel), for `backupJobs/{job}/operationResults/{op}`.
    pub fn job_operation(&self, sub: &str, rg: &str, vault: &str, name: &str, op: &str) -> Result<OperationRow> {
        let v = self.vault_row(sub, rg, vault)?;
        let o = self.vault_operation(sub, rg, vault, op)?;
        let want = format!("{}/backupJobs/{name}", v.id).to_ascii_lowercase();
        if o.target.as_deref().map(str::to_ascii_lowercase) != Some(want) {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for job '{name}'."),
            });
        }
        Ok(o)
    }

    /// `POST …/backupJobsExport`: the jobs the filter keeps, rendered as their GET answers, kept in
    /// the export's operation record until it is downloaded through its signed URL
    /// ([`Control::export_download`]). Returns the operation id.
    pub fn export_jobs(&self, sub: &str, rg: &str, vault: &str, filter: Option<&str>) -> Result<String> {
        let v = self.vault_row(sub, rg, vault)?;
        let q = JobFilter::parse(filter)?.query();
        let jobs = self
            .store
            .read_one(|db| db.jobs_page(&v.id, &q, None, usize::MAX))?
            .items;
        let kept: Vec<&JobRow> = jobs.iter().collect();
        let ids: Vec<&str> = kept.iter().map(|j| j.name.as_str()).collect();
        let props = json!({"objectType": "OperationStatusJobsExtendedInfo", "jobIds": ids});
        let op = self.finished_operation(&v, "ExportJobs", None, Some(props));
        let now = self.now();
        // The export itself: a row below the vault (it goes with the vault), of a type no route lists.
        let export = ResourceRow {
            id: export_id(&v.id, &op.id),
            subscription: v.subscription.clone(),
            resource_group: v.resource_group.clone(),
            type_key: EXPORT_TYPE.into(),
            name: op.id.clone(),
            parent_key: Some(v.id.to_ascii_lowercase()),
            body: json!({"jobs": kept.iter().map(|j| self.job_body(j)).collect::<Vec<_>>()}),
            etag: op.id.clone(),
            created: now,
            updated: now,
        };
        self.store.write(|db| {
            db.put_operation(&op)?;
            db.put_resource(&export)
        })?;
        Ok(op.id)
    }

    /// `GET …/backupJobs/operationResults/{op}`: where to download the export — a path below the
    /// server (`/rsvault/exports/{op}`, the caller puts its base URL before it) and a SAS-style
    /// query (`?se=EXPIRY&sig=SIGNATURE`) signed with the server key, valid for
    /// [`EXPORT_URL_MINUTES`] from now, that any node sharing the server key accepts.
    pub fn export_jobs_result(&self, sub: &str, rg: &str, vault: &str, op: &str) -> Result<(String, String)> {
        let o = self.backup_operation(sub, rg, vault, op)?;
        if o.kind != "ExportJobs" {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' is not a job export."),
            });
        }
        let expiry = (self.wall_now() + chrono::Duration::minutes(EXPORT_URL_MINUTES)).timestamp();
        let sig = self.export_signature(&o.id, expiry)?;
        Ok((format!("/rsvault/exports/{}", o.id), format!("?se={expiry}&sig={sig}")))
    }

    fn export_signature(&self, op: &str, expiry: i64) -> Result<String> {
        use base64::Engine as _;
        let mac = self.data()?.keys.mac(format!("jobs-export\n{op}\n{expiry}").as_bytes());
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac))
    }

    /// A plain GET of an export's signed URL: the exported jobs as a JSON array, if the signature
    /// is this server key's and has not expired. Every refusal is the same not-found, so a probe
    /// learns nothing about which exports exist.
    pub fn export_download(&self, op: &str, expiry: Option<&str>, sig: Option<&str>) -> Result<Value> {
        let refused = || Error::NotFound {
            code: "ResourceNotFound",
            message: "The export does not exist, or its URL has expired or is not valid.".into(),
        };
        let expiry: i64 = expiry.and_then(|e| e.parse().ok()).ok_or_else(refused)?;
        let want = self.export_signature(op, expiry)?;
        let given = sig.unwrap_or_default();
        let same =
            want.len() == given.len() && want.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same || expiry < self.wall_now().timestamp() {
            return Err(refused());
        }
        let export = self.store.read(|db| {
            let Some(o) = db.operation(op)?.filter(|o| o.kind == "ExportJobs") else {
                return Ok(None);
            };
            db.resource(&export_id(&o.scope_key, op))
        })?;
        let export = export.ok_or_else(refused)?;
        Ok(export.body["jobs"].clone())
    }

    /// `GET …/backupJobs/{job}`, as wire text.
    pub fn get_job(&self, sub: &str, rg: &str, vault: &str, name: &str) -> Result<Arc<str>> {
        let vault_id = self.vault_id_checked(sub, rg, vault)?;
        let id = format!("{vault_id}/backupJobs/{name}");
        let row = self
            .store
            .read_one(|db| db.job_text(&id))?
            .ok_or_else(|| job_not_found(vault, name))?;
        self.job_wire_text(row)
    }
}

fn job_not_found(vault: &str, name: &str) -> Error {
    Error::NotFound {
        code: "BMSUserErrorJobNotFound",
        message: format!("The job '{name}' was not found in vault '{vault}'."),
    }
}

/// Whether a job's answer no longer depends on the clock: it has ended, cannot be cancelled, and no
/// task of it is still running (a running task's `duration` grows with the clock).
fn settled(j: &JobRow) -> bool {
    let open_task = j
        .body
        .pointer("/extendedInfo/tasksList")
        .and_then(Value::as_array)
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.get("startTime").is_some() && t.get("endTime").is_none())
        });
    j.end.is_some()
        && JobStatus::of(j) != Some(JobStatus::InProgress)
        && !Phase::of(j).is_some_and(Phase::is_active)
        && !open_task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_times_in_azures_forms() {
        let want = chrono::NaiveDate::from_ymd_opt(2016, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc();
        for s in [
            "2016-01-01 12:00:00 AM",
            "01/01/2016 12:00:00 AM",
            "2016-01-01T00:00:00Z",
            "2016-01-01T00:00:00",
            "2016-01-01",
        ] {
            assert_eq!(parse_filter_time(s), Some(want), "{s}");
        }
        assert_eq!(
            parse_filter_time("2016-01-01 01:30:00 PM")
                .unwrap()
                .format("%H:%M")
                .to_string(),
            "13:30"
        );
        assert!(parse_filter_time("yesterday").is_none());
    }

    /// Issue 16: Azure's `ListJobsWithStartTimeAndEndTimeFilters` example writes midnight as
    /// `00:00:00 AM`; .NET's `DateTime.Parse` reads the hour of a time with `AM` as 0 to 12 and of one
    /// with `PM` as 0 to 23.
    #[test]
    fn filter_times_take_dotnet_hours_with_am_pm() {
        for (s, want) in [
            ("2016-01-01 00:00:00 AM", Some("2016-01-01 00:00")),
            ("2017-11-29 00:00:00 AM", Some("2017-11-29 00:00")),
            ("2016-01-01 00:30:00 AM", Some("2016-01-01 00:30")),
            ("2016-01-01 12:00:00 AM", Some("2016-01-01 00:00")),
            ("2016-01-01 1:00:00 AM", Some("2016-01-01 01:00")),
            ("2016-01-01 11:59:00 AM", Some("2016-01-01 11:59")),
            ("2016-01-01 00:00:00 PM", Some("2016-01-01 12:00")),
            ("2016-01-01 12:00:00 PM", Some("2016-01-01 12:00")),
            ("2016-01-01 11:00:00 PM", Some("2016-01-01 23:00")),
            ("2016-01-01 13:00:00 PM", Some("2016-01-01 13:00")),
            ("01/02/2016 00:00:00 am", Some("2016-01-02 00:00")),
            ("2016-01-01 13:00:00 AM", None),
            ("2016-01-01 24:00:00 PM", None),
            ("2016-01-01 00:00:00 XM", None),
        ] {
            let got = parse_filter_time(s).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
            assert_eq!(got.as_deref(), want, "{s}");
        }
    }

    proptest::proptest! {
        /// Every time written in Azure's 12-hour form reads back as itself, and so does its hour
        /// written as .NET also reads it (`00` for the midnight hour, `13`…`23` with `PM`).
        #[test]
        fn twelve_hour_times_round_trip(secs in 0i64..4_102_444_800) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            proptest::prop_assert_eq!(parse_filter_time(&t.format("%Y-%m-%d %I:%M:%S %p").to_string()), Some(t));
            proptest::prop_assert_eq!(parse_filter_time(&t.format("%m/%d/%Y %I:%M:%S %p").to_string()), Some(t));
            let mark = if t.hour() < 12 { "AM" } else { "PM" };
            proptest::prop_assert_eq!(parse_filter_time(&format!("{} {mark}", t.format("%Y-%m-%d %H:%M:%S"))), Some(t));
        }
    }

    #[test]
    fn bad_job_filters_name_the_problem() {
        for (f, word) in [
            ("status eq 'Done'", "Done"),
            ("operation eq 'Nap'", "Nap"),
            ("startTime eq 'soon'", "soon"),
            ("colour eq 'red'", "colour"),
            ("startTime eq '2020-01-02' and endTime eq '2020-01-01'", "later"),
        ] {
            let e = JobFilter::parse(Some(f))
                .err()
                .unwrap_or_else(|| panic!("{f} accepted"));
            assert_eq!(e.code(), "BMSUserErrorInvalidInput");
            assert!(e.to_string().contains(word), "{f}: {e}");
        }
    }
}
