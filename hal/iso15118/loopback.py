"""ISO 15118 over the loopback interface: what the mock HAL and the tests need of `iso15118`.

Runs inside the sidecar venv (imported by sidecar.py and evcc_sim.py) and only when the
interface is ``lo``: on a PLC modem's interface nothing here is applied.

The package assumes a real link: an IPv6 link-local address on the interface (``lo`` has only
``::1``), SDP by multicast to ``FF02::1`` (``lo`` has no multicast route) and a fixed SDP port
15118 (two SECCs on one machine, parallel tests, would collide). So, on ``lo`` only:

- the SECC binds its TCP server to ``::1`` (instead of the link-local address);
- the EVCC sends its SDP request to ``::1`` unicast, which the SECC's UDP server (bound to
  ``lo`` on the SDP port) receives like the multicast it would be on a modem, and connects to
  ``::1`` by the interface index (``::1%lo`` does not resolve, ``::1%1`` does);
- both sides use ``sdp_port`` instead of 15118.

Each patch replaces one module attribute of the package, so the package's own code does the
rest (SDP, TLS, EXI, the state machines) unchanged. Tested against iso15118 0.31.2.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

LOOPBACK = "lo"
_applied: dict[str, Any] = {}


def apply(sdp_port: int) -> None:
    """Patch the package for a session over ``lo`` with SDP on ``sdp_port``."""
    import iso15118.evcc.transport.tcp_client as tcp_client
    import iso15118.evcc.transport.udp_client as udp_client
    import iso15118.secc.transport.tcp_server as tcp_server
    import iso15118.secc.transport.udp_server as udp_server
    import iso15118.shared.network as network

    if _applied:
        udp_server.SDP_SERVER_PORT = udp_client.SDP_SERVER_PORT = sdp_port
        return
    link_local, full_addr = network._get_link_local_addr, network.get_link_local_full_addr

    def _link_local(nic: str) -> ipaddress.IPv6Address:
        if nic == LOOPBACK:
            return ipaddress.IPv6Address("::1")
        return link_local(nic)

    async def _full_addr(port: int, nic: str) -> tuple[str, int, int, int]:
        if nic == LOOPBACK:
            return ("::1", port, 0, 0)
        return await full_addr(port, nic)

    network._get_link_local_addr = _link_local
    network.get_link_local_full_addr = _full_addr
    tcp_server.get_link_local_full_addr = _full_addr
    udp_server.get_link_local_full_addr = _full_addr
    udp_server.SDP_SERVER_PORT = udp_client.SDP_SERVER_PORT = sdp_port
    udp_client.SDP_MULTICAST_GROUP = "::1"

    create = tcp_client.TCPClient.create

    async def _create(host: ipaddress.IPv6Address, port: int, queue: Any, is_tls: bool,
                      iface: str) -> Any:
        if host.is_loopback:
            iface = str(socket.if_nametoindex(iface))
        return await create(host, port, queue, is_tls, iface)

    tcp_client.TCPClient.create = staticmethod(_create)
    _applied["sdp_port"] = sdp_port


def patient_ev(factor: float) -> None:
    """Make the simulated EV wait ``factor`` times the ISO 15118 response timeouts.

    Two JVMs (the SECC's and the EVCC's EXI codecs) on a busy 2-core CI machine answer a
    message in up to a second or two, against the 2 s most ISO 15118-2 requests allow: a bench
    or a test over loopback is not a real-time PLC link, so the EV simulator may be patient.
    The SECC keeps the standard's timings. Replaces the ``Timeouts`` enums the EVCC's modules
    imported with scaled copies of the same members.
    """
    import enum
    import importlib

    if factor == 1:
        return
    for name in ("iso15118.evcc.comm_session_handler", "iso15118.evcc.states.sap_states",
                 "iso15118.evcc.states.iso15118_2_states", "iso15118.evcc.states.din_spec_states",
                 "iso15118.evcc.states.iso15118_20_states", "iso15118.evcc.transport.udp_client",
                 "iso15118.evcc.states.evcc_state"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in ("Timeouts", "TimeoutsShared"):
            original = getattr(module, attr, None)
            if not isinstance(original, enum.EnumMeta):
                continue
            scaled = enum.Enum("Timeouts", {
                k: float(m.value) * (1 if k == "SDP_REQ" else factor)
                for k, m in original.__members__.items()}, type=float)
            setattr(module, attr, scaled)

