"""The console's HTML: one small server-rendered shell per page, filled by ``assets/console.js`` from the REST API.

Every page is the same shell: a header (the pages, who is signed in, sign out), a live region that announces what
arrives (exceptions, acknowledgements), and the page's regions. A region is a ``<section>`` with a stable
``data-testid`` and ``data-region`` naming what the script draws in it; the overview holds every region at a
glance, each heading linking to its full page. Nothing here is a business rule: the script asks the API.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from urllib.parse import quote

from .roles import ConsoleUser

__all__ = ["PAGES", "REGIONS", "Region", "render_page", "render_problem", "render_sign_in"]


@dataclass(frozen=True)
class Region:
    testid: str
    title: str
    #: The full page's path under /console/.
    page: str


#: The overview's regions, in reading order (the data-testids are a contract with the browser tests and users'
#: own monitoring: never renamed).
REGIONS = (
    Region("fleet-map", "Fleet map", "map"),
    Region("exception-queue", "Exceptions and check-ins due", "exceptions"),
    Region("tender-board", "Tender board", "tenders"),
    Region("mission-list", "Missions", "missions"),
    Region("webhook-log", "Webhook deliveries", "webhooks"),
    Region("kpi-report", "Pilot KPIs", "kpis"),
)
#: Path under /console/ → the regions it shows ("" is the overview: all of them).
PAGES = {"": REGIONS, **{region.page: (region,) for region in REGIONS}}
_PAGE_TITLES = {"": "Overview", **{region.page: region.title for region in REGIONS}}


def _shell(title: str, body: str, *, data: dict[str, str], user: ConsoleUser | None) -> str:
    attributes = " ".join(f'data-{key}="{html.escape(value)}"' for key, value in data.items())
    nav = "".join(f'<a href="/console/{page}">{html.escape(name)}</a>' for page, name in _PAGE_TITLES.items())
    who = ""
    if user is not None:
        who = (f'<span class="who">{html.escape(user.display_name)} · {html.escape(user.carrier)} · '
               f'{html.escape(", ".join(user.roles))}</span>'
               '<form method="post" action="/console/logout"><button type="submit">Sign out</button></form>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Haulmesh console</title>
<link rel="stylesheet" href="/console/vendor/maplibre-gl.css">
<link rel="stylesheet" href="/console/assets/console.css">
<script type="module" src="/console/assets/console.js"></script>
</head>
<body {attributes}>
<a class="skip" href="#main">Skip to content</a>
<header>
<a class="brand" href="/console/">Haulmesh</a>
<nav aria-label="Console pages">{nav if user is not None else ""}</nav>
{who}
</header>
<div id="announcer" class="visually-hidden" role="status" aria-live="polite"></div>
<ul id="alerts" class="alerts" aria-live="assertive" aria-label="Alerts"></ul>
<main id="main">
<h1>{html.escape(title)}</h1>
{body}
</main>
</body>
</html>
"""


def render_page(page: str, user: ConsoleUser, *, tile_url: str | None, mission: str | None = None) -> str:
    """The page at /console/<page> (or a mission's timeline) for ``user``."""
    data = {"page": page or "overview", "carrier": user.carrier, "scopes": " ".join(sorted(user.scopes)),
            "roles": " ".join(user.roles), "tile-url": tile_url or ""}
    if mission is not None:
        data["mission"] = mission
        body = ('<section data-testid="mission-timeline" data-region="mission-timeline" aria-labelledby="h-timeline">'
                f'<h2 id="h-timeline">Mission {html.escape(mission)}</h2><div class="region-body">Loading…</div>'
                "</section>")
        return _shell(f"Mission {mission}", body, data=data, user=user)
    sections = []
    for region in PAGES[page]:
        heading = (f'<a href="/console/{region.page}">{html.escape(region.title)}</a>' if page == ""
                   else html.escape(region.title))
        # The overview's regions scroll within a fixed height: reachable by keyboard (WCAG 2.1.1), named by their
        # heading.
        scrolls = f' tabindex="0" role="group" aria-labelledby="h-{region.testid}"' if page == "" else ""
        sections.append(f'<section data-testid="{region.testid}" data-region="{region.testid}" '
                        f'aria-labelledby="h-{region.testid}"><h2 id="h-{region.testid}">{heading}</h2>'
                        f'<div class="region-body"{scrolls}>Loading…</div></section>')
    layout = "overview" if page == "" else "full"
    return _shell(_PAGE_TITLES[page], f'<div class="{layout}">{"".join(sections)}</div>', data=data, user=user)


def render_sign_in(*, dev_roles: tuple[str, ...], dev_carrier: str, return_to: str) -> str:
    """The sign-in page without an identity provider (with one, /console/login goes straight to it): in dev mode
    one link per role, else what to configure."""
    parts = []
    if dev_roles:
        links = "".join(f'<li><a href="/console/dev-login?role={role}&amp;carrier={html.escape(dev_carrier)}'
                        f'&amp;return_to={quote(return_to)}">{html.escape(role)}</a></li>' for role in dev_roles)
        parts.append(f"<p>Dev mode: sign in to carrier <code>{html.escape(dev_carrier)}</code> as</p><ul>{links}</ul>")
    else:
        parts.append("<p>No identity provider is configured (HAULMESH_OIDC_ISSUER): see docs/console.md.</p>")
    return _shell("Sign in", "".join(parts), data={"page": "sign-in"}, user=None)


def render_problem(title: str, message: str) -> str:
    """A page saying what went wrong with a sign-in, and the way back."""
    body = (f'<p class="problem" role="alert">{html.escape(message)}</p>'
            '<p><a href="/console/login">Sign in again</a></p>')
    return _shell(title, body, data={"page": "problem"}, user=None)


def session_json(user: ConsoleUser) -> str:
    return json.dumps({"subject": user.subject, "name": user.display_name, "carrier": user.carrier,
                       "roles": list(user.roles), "scopes": sorted(user.scopes), "issuer": user.issuer})
