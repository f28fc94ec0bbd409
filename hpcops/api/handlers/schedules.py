"""Schedules: `schedule add|ls|show|pause|resume|remove|run-now`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hpcops.access import authorize, check_priority
from hpcops.api.handlers.base import Daemon, Handler, Request
from hpcops.api.params import (
    ScheduleAddParams,
    ScheduleListParams,
    ScheduleParams,
    ScheduleShowParams,
)
from hpcops.api.views import firing_view, schedule_view
from hpcops.errors import InvalidInput
from hpcops.store import Schedule


class ScheduleHandlers:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def methods(self) -> dict[str, Handler]:
        return {
            "schedule_add": self.schedule_add,
            "schedule_list": self.schedule_list,
            "schedule_show": self.schedule_show,
            "schedule_pause": self.schedule_pause,
            "schedule_resume": self.schedule_resume,
            "schedule_remove": self.schedule_remove,
            "schedule_run_now": self.schedule_run_now,
        }

    def schedule_add(self, req: Request) -> dict[str, Any]:
        from hpcops.pipeline import pipeline_from_wire
        from hpcops.scheduling.settings import ScheduleOptions
        from hpcops.spec import parse_spec

        authorize("submit", req.caller, req.role)
        params = ScheduleAddParams.parse(req.params)
        options = ScheduleOptions(
            name=params.name,
            cron=params.cron,
            every_s=params.every_s,
            timezone=params.timezone,
            catch_up=params.catch_up,
            catch_up_grace_s=params.catch_up_grace_s,
            allow_overlap=params.allow_overlap,
            on_data_change=params.on_data_change,
            check_every_s=params.check_every_s,
        )
        service = self.daemon.schedule_service()
        access = self.daemon.config.access
        if params.pipeline is not None:
            # Checked again here: the client's checks vouch for nothing.
            loaded = pipeline_from_wire(params.pipeline, params.source)
            for spec in loaded.specs.values():
                check_priority(spec.priority, req.role, access)
            schedule = service.add_pipeline(loaded, options, req.caller)
        else:
            assert params.yaml is not None  # ScheduleAddParams: exactly one of the two
            spec = parse_spec(params.yaml, params.source)
            check_priority(spec.priority, req.role, access)
            schedule = service.add(spec, params.source, options, req.caller)
        view = self._view(schedule)
        self.daemon.audit(
            req.caller,
            req.role,
            "schedule_add",
            f"schedule {schedule.id}",
            allowed=True,
            after=f"{view['cadence']} {schedule.name} ({schedule.kind} {schedule.spec_name})",
        )
        return view

    def schedule_list(self, req: Request) -> list[dict[str, Any]]:
        authorize("read", req.caller, req.role)
        params = ScheduleListParams.parse(req.params)
        service = self.daemon.schedule_service()
        store = self.daemon.store
        schedules = store.schedules(include_removed=params.include_removed)
        next_times = service.next_fire_times(schedules)
        latest = store.latest_firings()
        return [
            schedule_view(
                s,
                next_fire_at=next_times.get(s.id or 0),
                # Checked now: a spec the cluster or the templates no longer accept shows up
                # here before its next firing fails.
                problem=None if s.removed_at is not None else service.problem(s),
                last_firing=latest.get(s.id or 0),
            )
            for s in schedules
        ]

    def schedule_show(self, req: Request) -> dict[str, Any]:
        authorize("read", req.caller, req.role)
        params = ScheduleShowParams.parse(req.params)
        schedule = self.daemon.store.find_schedule(params.schedule)
        assert schedule.id is not None
        view = self._view(schedule)
        # A spec's canonical YAML, or a pipeline's definition (its steps' specs in `pipeline`).
        view["spec"] = schedule.spec_yaml
        if schedule.pipeline_json is not None:
            view["pipeline"] = json.loads(schedule.pipeline_json)
        firings = self.daemon.store.firings(schedule.id, limit=params.limit)
        view["firings"] = [firing_view(f, state) for f, state in firings]
        return view

    def schedule_pause(self, req: Request) -> dict[str, Any]:
        def pause(s: Schedule) -> tuple[Schedule, str]:
            service = self.daemon.schedule_service()
            return service.set_paused(s, True), f"schedule {s.id} ({s.name}) paused"

        return self._change(req, "schedule_pause", pause)

    def schedule_resume(self, req: Request) -> dict[str, Any]:
        def resume(s: Schedule) -> tuple[Schedule, str]:
            return (
                self.daemon.schedule_service().set_paused(s, False),
                f"schedule {s.id} ({s.name}) resumed; firings missed while paused are not made up",
            )

        return self._change(req, "schedule_resume", resume)

    def schedule_remove(self, req: Request) -> dict[str, Any]:
        def remove(s: Schedule) -> tuple[Schedule, str]:
            return (
                self.daemon.schedule_service().remove(s, req.caller),
                f"schedule {s.id} ({s.name}) removed; its runs and firings are kept",
            )

        return self._change(req, "schedule_remove", remove)

    def schedule_run_now(self, req: Request) -> dict[str, Any]:
        fired: list[dict[str, Any]] = []

        def run_now(s: Schedule) -> tuple[Schedule, str]:
            firing = self.daemon.schedule_service().run_now(s, req.caller)
            fired.append(firing_view(firing, None))
            if firing.outcome == "submitted" and firing.pipeline_id is not None:
                return s, f"schedule {s.id} ({s.name}): pipeline p{firing.pipeline_id} queued"
            if firing.outcome == "submitted":
                return s, f"schedule {s.id} ({s.name}): run {firing.run_id} queued"
            return s, f"schedule {s.id} ({s.name}): {firing.outcome}: {firing.reason}"

        result = self._change(req, "schedule_run_now", run_now)
        return {**result, "firing": fired[0]}

    def _change(
        self, req: Request, action: str, apply: Callable[[Schedule], tuple[Schedule, str]]
    ) -> dict[str, Any]:
        """Find, authorize (owner or lead), apply, audit (status before and after), answer."""
        schedule = self.daemon.store.find_schedule(ScheduleParams.parse(req.params).schedule)
        authorize("schedule", req.caller, req.role, owner=schedule.owner, thing="schedule")
        if schedule.removed_at is not None:
            raise InvalidInput(
                f"schedule {schedule.id} ({schedule.name}) was removed by {schedule.removed_by}"
            )
        before = self._view(schedule)
        updated, message = apply(schedule)
        after = self._view(updated)
        self.daemon.audit(
            req.caller,
            req.role,
            action,
            f"schedule {schedule.id}",
            allowed=True,
            before=before["status"],
            after=after["status"],
            detail=message,
        )
        return {**after, "message": message}

    def _view(self, schedule: Schedule) -> dict[str, Any]:
        service = self.daemon.schedule_service()
        assert schedule.id is not None
        removed = schedule.removed_at is not None
        return schedule_view(
            schedule,
            next_fire_at=service.next_fire_times([schedule]).get(schedule.id),
            problem=None if removed else service.problem(schedule),
            last_firing=self.daemon.store.latest_firings().get(schedule.id),
        )
