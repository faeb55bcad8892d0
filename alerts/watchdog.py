"""The server-side watchdog: a whole site gone quiet is one alarm, not one per patient. Pure.

Rules of this file:
- A site is watched once it is known: named in the configuration with enrolled devices, or heard
  from (derived vitals of any of its patients). Silence counts from the service's start, like
  stale data, so a site that never sends anything is caught too.
- No vitals from any device of the site for `after_s` raises `site_quiet` (high priority: nobody
  at the site is being monitored) on the pseudo-patient `site-<site>`; the first vitals clear it.
  The message says what the service knows of the cause: ingest's last heartbeat, gateways online.
- While `site_quiet` is open, the per-patient alarms it explains (stale data, gateway or device
  offline, data gaps) are raised but not notified (inhibition in alerts.engine): one SMS says the
  site is down, not one per patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.rules import Condition
from nabz.contract import GatewayStatus, Heartbeat

__all__ = ["SiteWatch", "site_patient", "SITE_QUIET", "EXPLAINED_BY_SITE_QUIET"]

SITE_QUIET = "site_quiet"
EXPLAINED_BY_SITE_QUIET = frozenset({"stale_data", "gateway_offline", "device_offline", "data_gap"})


def site_patient(site: str) -> str:
    """The pseudo-patient a site-wide alarm is raised on."""
    return f"site-{site}"


@dataclass
class SiteWatch:
    after_s: float
    started_at: float | None = None
    last_data: dict[str, float] = field(default_factory=dict)  # site -> last vitals (service clock)
    raised: dict[str, float] = field(default_factory=dict)  # site -> since
    ingest: dict[str, tuple[float, str]] = field(default_factory=dict)  # instance -> (heard, state)
    gateways: dict[tuple[str, str], bool] = field(default_factory=dict)  # (site, gateway) -> online

    def watch(self, site: str) -> None:
        """A site to watch from the start (it has enrolled devices)."""
        self.last_data.setdefault(site, self.started_at if self.started_at is not None else 0.0)

    def start(self, now: float) -> None:
        if self.started_at is None:
            self.started_at = now
            for site, t in self.last_data.items():
                self.last_data[site] = max(t, now)

    def seen(self, site: str, now: float) -> None:
        self.last_data[site] = now

    def heartbeat(self, hb: Heartbeat, now: float) -> None:
        if hb.service == "ingest":
            self.ingest[hb.instance] = (now, hb.state)

    def gateway(self, s: GatewayStatus) -> None:
        self.gateways[(s.site, s.gateway)] = s.state == "online"

    def restore(self, site: str, since: float) -> None:
        self.raised[site] = since

    def tick(self, now: float) -> list[Condition]:
        self.start(now)
        out: list[Condition] = []
        if self.after_s <= 0:
            return out
        for site, last in self.last_data.items():
            quiet = now - last >= self.after_s
            if quiet and site not in self.raised:
                self.raised[site] = last
                out.append(
                    Condition(site_patient(site), SITE_QUIET, True, "high", now - last, self.after_s, "s",
                              last, now, self._message(site, last, now), True)
                )  # fmt: skip
            elif not quiet and site in self.raised:
                since = self.raised.pop(site)
                out.append(
                    Condition(site_patient(site), SITE_QUIET, False, "high", None, self.after_s, "s", since,
                              now, "data flowing again", True)
                )  # fmt: skip
        return out

    def _message(self, site: str, last: float, now: float) -> str:
        gws = [online for (s, _), online in self.gateways.items() if s == site]
        beats = sorted(self.ingest.values())
        if beats:
            heard, state = beats[-1]
            ingest = f"ingest last heard {now - heard:.0f} s ago ({state})"
        else:
            ingest = "ingest not heard"
        gateways = f"gateways online {sum(gws)}/{len(gws)}" if gws else "no gateway status"
        return f"no data from any patient for {(now - last) / 60:.0f} min; {ingest}; {gateways}"
