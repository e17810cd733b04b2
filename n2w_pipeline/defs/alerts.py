"""Alerts: a failed run and a failed blocking check reach people, through a webhook
(``N2W_ALERT_WEBHOOK``: one JSON POST per alert) and, when configured, Slack
(``N2W_SLACK_TOKEN`` + ``N2W_SLACK_CHANNEL``, through Dagster's ``dagster-slack``).

The body names what an operator needs first::

    {"alert": "run_failure" | "check_failure", "ship": "IMO9976903" | null,
     "ships": [...], "hours": {"start": "2025-03-01T00:00", "end": "2025-03-01T06:00"} | null,
     "run_id": "...", "run_link": "<N2W_UI_URL>/runs/<run id>", "job": "...", "kind": "backfill",
     "error": "one line", "asset": "...", "check": "..."}

Both sensors watch every run of the instance (the UI's, the daemon's and `n2w backfill`'s
in-process runs) and are on by default when an alert target is configured. A target that does
not answer fails the tick (visible on the sensor's page) with its reason, never the URL.
"""

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import dagster as dg

from n2w_pipeline.config import Settings
from n2w_pipeline.logs import kind_of, ship_in_key, ship_of

RUN_SENSOR = "n2w_run_failure_alert"
CHECK_SENSOR = "n2w_check_failure_alert"
TIMEOUT_S = 10


class AlertError(Exception):
    """An alert target did not take the alert."""


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """The innermost error a failed run recorded (step failure first), on one line, without
    the stack traces (they are in the run's log)."""
    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        for rec in instance.get_records_for_run(run_id, of_type=kind).records:
            event = rec.event_log_entry.dagster_event
            error = getattr(event.event_specific_data, "error", None) if event else None
            text = rec.event_log_entry.user_message
            while error is not None:  # the cause chain: the last one is where it started
                text = error.message
                error = error.cause or error.context
            return " ".join(text.split("Stack Trace:")[0].split())[:500]
    return "no failure recorded (see the run's log in the Dagster UI)"


def _hour(key: str | None) -> str | None:
    """The hour part of ``2025-03-01-06:00|IMO…`` as ``2025-03-01T06:00``."""
    for part in (key or "").split("|"):
        if len(part) == 16 and part[:4].isdigit():
            return f"{part[:10]}T{part[11:]}"
    return None


def run_scope(tags: Mapping[str, str], ships: tuple[str, ...]) -> dict[str, Any]:
    """ship, ships and hours of a run, from its partition tags."""
    first = tags.get("dagster/asset_partition_range_start") or tags.get("dagster/partition")
    last = tags.get("dagster/asset_partition_range_end") or first
    start, end = _hour(first), _hour(last)
    hours = None
    if start and end:
        import datetime as dt

        stop = dt.datetime.fromisoformat(end) + dt.timedelta(hours=1)
        hours = {"start": start, "end": stop.strftime("%Y-%m-%dT%H:%M")}
    ship = ship_of(tags, ships)
    listed = [s for s in tags.get("n2w/realtime_ships", "").split(",") if s]
    a, b = ship_in_key(first or "", ships), ship_in_key(last or "", ships)
    if not ship and not listed and a in ships and b in ships:  # a range run of several ships
        listed = list(ships[ships.index(a):ships.index(b) + 1])
    return {"ship": ship, "ships": [ship] if ship else listed, "hours": hours}


def run_payload(settings: Settings, instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, Any]:
    return {
        "alert": "run_failure",
        **run_scope(run.tags, settings.ships),
        "run_id": run.run_id,
        "run_link": f"{settings.ui_url.rstrip('/')}/runs/{run.run_id}",
        "job": run.job_name,
        "kind": kind_of(run.tags, run.job_name),
        "error": run_error(instance, run.run_id),
    }


def check_payload(settings: Settings, run: dg.DagsterRun | None, run_id: str,
                  evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    tags = run.tags if run else {}
    scope = run_scope(tags, settings.ships)
    windows = evaluation.metadata.get("windows")
    found = windows.value if windows is not None else None
    if isinstance(found, list) and found:  # n2w's checks name the windows they checked
        ships = sorted({w[0] for w in found})
        scope = {"ship": ships[0] if len(ships) == 1 else None, "ships": ships,
                 "hours": {"start": min(w[1] for w in found)[:16], "end": max(w[2] for w in found)[:16]}}
    return {
        "alert": "check_failure",
        **scope,
        "run_id": run_id,
        "run_link": f"{settings.ui_url.rstrip('/')}/runs/{run_id}",
        "job": run.job_name if run else None,
        "kind": kind_of(tags, run.job_name if run else None),
        "asset": evaluation.asset_key.to_user_string(),
        "check": evaluation.check_name,
        "error": " ".join((evaluation.description or "check failed").split())[:500],
    }


def text_of(payload: Mapping[str, Any]) -> str:
    """The one-line message of an alert (Slack, logs)."""
    where = payload.get("ship") or ",".join(payload.get("ships") or []) or "fleet"
    hours = payload.get("hours") or {}
    span = f" {hours['start']} .. {hours['end']}" if hours else ""
    what = (f"check {payload['asset']}/{payload['check']} failed" if payload["alert"] == "check_failure"
            else f"run of {payload.get('job')} failed")
    return f"n2w {payload.get('kind')}: {what} for {where}{span}: {payload['error']} <{payload['run_link']}>"


def notify(settings: Settings, payload: Mapping[str, Any], log: Any = None) -> list[str]:
    """Send ``payload`` to every configured target; returns the targets reached. Raises
    ``AlertError`` naming the targets that failed (after trying all of them)."""
    sent, failed = [], []
    if settings.alert_webhook:
        host = urlsplit(settings.alert_webhook).hostname or "?"
        try:
            post_json(settings.alert_webhook, payload)
            sent.append(f"webhook {host}")
        except (OSError, urllib.error.URLError) as exc:
            failed.append(f"N2W_ALERT_WEBHOOK (host {host}): {getattr(exc, 'reason', exc)}")
    if settings.slack_token and settings.slack_channel:
        try:
            from dagster_slack import SlackResource

            SlackResource(token=settings.slack_token).get_client().chat_postMessage(
                channel=settings.slack_channel, text=text_of(payload))
            sent.append(f"slack {settings.slack_channel}")
        except Exception as exc:  # noqa: BLE001 - slack_sdk raises its own errors; reported below
            failed.append(f"Slack {settings.slack_channel}: {type(exc).__name__}")
    if log is not None and sent:
        log.info(f"alert sent to {', '.join(sent)}: {text_of(payload)}")
    if failed:
        raise AlertError("alert not delivered: " + "; ".join(failed))
    return sent


def post_json(url: str, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload, default=str).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "n2w-alerts"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310 - the operator's URL
        resp.read()


def _status(settings: Settings) -> dg.DefaultSensorStatus:
    on = bool(settings.alert_webhook or (settings.slack_token and settings.slack_channel))
    return dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED


def build_run_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=RUN_SENSOR, monitor_all_code_locations=True, default_status=_status(settings),
        minimum_interval_seconds=30,
        description="Posts every failed run of the instance (ship, hours, run link, error) to "
        "N2W_ALERT_WEBHOOK and, when N2W_SLACK_TOKEN and N2W_SLACK_CHANNEL are set, to Slack.",
    )
    def n2w_run_failure_alert(context: dg.RunFailureSensorContext) -> None:
        payload = run_payload(settings, context.instance, context.dagster_run)
        notify(settings, payload, context.log)

    return n2w_run_failure_alert


def build_check_failure_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=CHECK_SENSOR, default_status=_status(settings), minimum_interval_seconds=30,
        description="Posts every failed blocking asset check (reconciliation, rollups) with its ship, "
        "hours, run link and summary to N2W_ALERT_WEBHOOK and, when configured, Slack.",
    )
    def n2w_check_failure_alert(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return check_tick(settings, context)

    return n2w_check_failure_alert


def check_tick(settings: Settings, context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Alert on the failed blocking check evaluations stored since the cursor (a storage id);
    the first tick starts from the newest one, so history is not re-sent."""
    instance = context.instance
    kind = dg.DagsterEventType.ASSET_CHECK_EVALUATION
    if context.cursor is None:
        latest = instance.get_event_records(dg.EventRecordsFilter(event_type=kind), limit=1, ascending=False)
        context.update_cursor(str(latest[0].storage_id if latest else 0))
        return dg.SkipReason("started: alerts on check evaluations from now on")
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=kind, after_cursor=int(context.cursor)), limit=200, ascending=True)
    sent = 0
    for rec in records:
        event = rec.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed and evaluation.blocking:
            run_id = rec.event_log_entry.run_id
            notify(settings, check_payload(settings, instance.get_run_by_id(run_id), run_id, evaluation),
                   context.log)
            sent += 1
        context.update_cursor(str(rec.storage_id))  # an alert that raised is tried again next tick
    return dg.SkipReason(f"{len(records)} check evaluation(s), {sent} alert(s) sent")
