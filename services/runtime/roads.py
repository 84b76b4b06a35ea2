"""The fleet's road network (the ``roads`` part of the lane facts) and detours around a closed road.

A closure is reported where the truck is (``road_closure_ahead``: the road ahead of it is closed). The detour:
the mapped road segment the truck is on (the nearest, within ``route_match_miles``); the end of it the truck is
heading for (the one from which the destination is nearer by road) is cut off, so the truck turns back to the other
end and takes the shortest way by road from there to its next stop, without that segment. No segment near the
truck, or no way around it: no detour (None), and the caller decides what the truck does instead (it stops).

File format, inside the lane facts document::

    "roads": {"places": [{"name": "Houston, TX", "lat": 29.7604, "lon": -95.3698}, ...],
              "segments": [{"from": "Houston, TX", "to": "Baytown, TX", "road": "I-10", "miles": 25}, ...]}

Segments are two-way (a closure closes both directions: the conservative reading of a report that names no
direction). Plain Python with networkx for the shortest paths; no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx
import shapely

from ._geo import EARTH_RADIUS_M, METERS_PER_MILE, great_circle_miles

__all__ = ["Detour", "RoadNetwork", "empty_network", "parse_roads"]

Point = tuple[float, float]
_MAX_PLACES, _MAX_SEGMENTS = 2000, 5000
_ORIGIN = shapely.Point(0.0, 0.0)


@dataclass(frozen=True)
class Detour:
    """A way around a closed segment: the waypoints to follow (the junction behind the truck first, the next stop
    last), its road miles from the truck's position, the roads it takes, and the segment it avoids."""

    waypoints: tuple[Point, ...]
    miles: float
    roads: tuple[str, ...]
    #: The closed segment: its road and the two places it joins.
    avoided_road: str
    avoided_between: tuple[str, str]

    @property
    def avoided(self) -> str:
        """The closed segment for people: ``I-59 Slidell, LA - Hattiesburg, MS``."""
        return f"{self.avoided_road} {self.avoided_between[0]} - {self.avoided_between[1]}"


@dataclass(frozen=True)
class RoadNetwork:
    """Named places and the road segments between them (a weighted, undirected graph). Two networks are equal when
    their places and segments are (the graph is derived from them)."""

    places: Mapping[str, Point]
    #: (from, to, road, miles) of each segment, as the file lists them.
    segments: tuple[tuple[str, str, str, float], ...]
    graph: networkx.Graph = field(compare=False, repr=False)

    def detour(self, position: Point, destination: Point, *, near_miles: float) -> Detour | None:
        """The way from ``position`` to ``destination`` around the segment the truck is on (see the module
        docstring); None when no segment lies within ``near_miles`` of it or nothing connects around it."""
        on = self._segment_at(position, near_miles)
        if on is None:
            return None
        a, b = on
        target = min(self.places, key=lambda name: great_circle_miles(*self.places[name], *destination))
        to_target = networkx.single_source_dijkstra_path_length(self.graph, target, weight="miles")
        if a not in to_target and b not in to_target:
            return None

        def remaining(end: str) -> float:
            return great_circle_miles(*position, *self.places[end]) + to_target.get(end, math.inf)

        ahead = min((a, b), key=remaining)
        behind = b if ahead == a else a
        without = networkx.restricted_view(self.graph, [], [(a, b)])
        try:
            miles, path = networkx.single_source_dijkstra(without, behind, target, weight="miles")
        except networkx.NetworkXNoPath:
            return None
        roads: list[str] = []
        for u, v in itertools.pairwise(path):
            road = self.graph.edges[u, v]["road"]
            if not roads or roads[-1] != road:
                roads.append(road)
        total = (great_circle_miles(*position, *self.places[behind]) + miles
                 + great_circle_miles(*self.places[target], *destination))
        points = [self.places[name] for name in path]
        if great_circle_miles(*points[-1], *destination) < 1.0:
            points.pop()  # the destination is a mapped place itself: once is enough
        return Detour(waypoints=(*points, destination), miles=round(total, 1),
                      roads=tuple(roads), avoided_road=self.graph.edges[a, b]["road"], avoided_between=(a, b))

    def _segment_at(self, position: Point, near_miles: float) -> tuple[str, str] | None:
        best, best_miles = None, near_miles
        for a, b in self.graph.edges:
            miles = _miles_to_segment(position, self.places[a], self.places[b])
            if miles <= best_miles:
                best, best_miles = (a, b), miles
        return best


def _miles_to_segment(p: Point, a: Point, b: Point) -> float:
    """Miles from ``p`` to the straight segment ``a`` to ``b``, in an equirectangular projection around ``p`` (fine at
    road scale); shapely measures it."""
    miles_per_degree = math.radians(1) * EARTH_RADIUS_M / METERS_PER_MILE
    scale = math.cos(math.radians(p[0]))

    def xy(q: Point) -> tuple[float, float]:
        return (q[1] - p[1]) * scale * miles_per_degree, (q[0] - p[0]) * miles_per_degree

    return float(shapely.LineString([xy(a), xy(b)]).distance(_ORIGIN))


def parse_roads(data: Any, point: Any) -> RoadNetwork:
    """The ``roads`` document (``point(lat, lon, where)`` checks a coordinate); ValueError/KeyError/TypeError
    naming the bad entry."""
    if not isinstance(data, Mapping) or set(data) - {"places", "segments"}:
        raise ValueError("roads must be an object with places and segments")
    raw_places, raw_segments = data.get("places", []), data.get("segments", [])
    if not isinstance(raw_places, list) or len(raw_places) > _MAX_PLACES:
        raise ValueError(f"roads.places must be a list of at most {_MAX_PLACES}")
    if not isinstance(raw_segments, list) or len(raw_segments) > _MAX_SEGMENTS:
        raise ValueError(f"roads.segments must be a list of at most {_MAX_SEGMENTS}")
    places: dict[str, Point] = {}
    for i, place in enumerate(raw_places):
        where = f"roads.places[{i}]"
        if not isinstance(place, Mapping) or not isinstance(place.get("name"), str) or not place["name"]:
            raise ValueError(f"{where}: needs a name")
        if place["name"] in places:
            raise ValueError(f"{where}: duplicate place {place['name']!r}")
        places[place["name"]] = point(place.get("lat"), place.get("lon"), where)
    graph = networkx.Graph()
    graph.add_nodes_from(places)
    segments = []
    for i, segment in enumerate(raw_segments):
        where = f"roads.segments[{i}]"
        if not isinstance(segment, Mapping):
            raise TypeError(f"{where} must be an object")
        a, b, road, miles = segment.get("from"), segment.get("to"), segment.get("road"), segment.get("miles")
        if a not in places or b not in places or a == b:
            raise ValueError(f"{where}: from and to must be two different places of roads.places")
        if not isinstance(road, str) or not road:
            raise ValueError(f"{where}: needs the road's name (e.g. I-10)")
        straight = great_circle_miles(*places[a], *places[b])
        if not isinstance(miles, int | float) or isinstance(miles, bool) or not straight * 0.95 <= miles <= \
                max(straight * 3, 1.0):
            raise ValueError(f"{where}: miles {miles!r} cannot be the road miles between {a} and {b} "
                             f"({straight:.0f} mi in a straight line)")
        graph.add_edge(a, b, road=road, miles=float(miles))
        segments.append((a, b, road, float(miles)))
    return RoadNetwork(places=places, segments=tuple(segments), graph=graph)


def empty_network() -> RoadNetwork:
    """No mapped roads: every detour is None."""
    return RoadNetwork(places={}, segments=(), graph=networkx.Graph())
