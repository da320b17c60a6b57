"""init_data.xml (APP_INIT_DATA): read it as the BOINC API does, write it as the client does.

Pure: text in, values out, and back. The writer follows the 7.20.5 client's element order,
number formats (``%d``, ``%f``) and escapes byte for byte (docs/compatibility.md#init-data),
so a file we write is accepted by the real BOINC API and a golden file from the real client
round-trips unchanged.

Escaping (``xml_escape`` in BOINC): ``<`` and ``&`` become entities, every byte above 127
becomes ``&#NNN;`` per byte, TAB/LF/CR become ``&#9;``/``&#10;``/``&#13;``, other control
bytes are dropped. Only names and host strings are escaped; paths and names of files are raw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

from vmwrapper.cnum import c_double, c_int
from vmwrapper.errors import InitDataError

FILE_NAME = "init_data.xml"


# ---------------------------------------------------------------------------------------------
# escapes


def xml_escape(text: str) -> str:
    """BOINC's ``xml_escape``: per-byte ``&#NNN;`` for non-ASCII, entities for ``<`` ``&``."""
    out: list[str] = []
    for byte in text.encode("utf-8"):
        if byte == ord("<"):
            out.append("&lt;")
        elif byte == ord("&"):
            out.append("&amp;")
        elif byte > 127 or byte in (9, 10, 13):
            out.append(f"&#{byte};")
        elif byte < 32:
            continue  # the client drops other control bytes
        else:
            out.append(chr(byte))
    return "".join(out).replace("]]>", "]]&gt;")


def _from_byte_escapes(text: str) -> str:
    """Undo per-byte escapes: ``&#195;&#169;`` was parsed as 'Ã©'; it means UTF-8 'é'."""
    if any(ord(c) > 255 for c in text) or all(ord(c) < 128 for c in text):
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return text


_INTEGRAL = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|\d+)\s*")

# A raw '&' that starts no entity: the client writes paths unescaped, so a path may hold one.
_STRAY_AMPERSAND = re.compile(r"&(?!#\d+;|#x[0-9a-fA-F]+;|[A-Za-z]\w*;)")


# ---------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class HostInfo:
    timezone: int = 0
    domain_name: str = ""
    ip_addr: str = ""
    host_cpid: str = ""
    p_ncpus: int = 0
    p_vendor: str = ""
    p_model: str = ""
    p_features: str = ""
    p_fpops: float = 0.0
    p_iops: float = 0.0
    p_membw: float = 0.0
    p_calculated: float = 0.0
    p_vm_extensions_disabled: bool = False
    m_nbytes: float = 0.0
    m_cache: float = 0.0
    m_swap: float = 0.0
    d_total: float = 0.0
    d_free: float = 0.0
    os_name: str = ""
    os_version: str = ""
    n_usable_coprocs: int = 0
    wsl_available: bool = False
    product_name: str = ""
    mac_address: str = ""
    virtualbox_version: str = ""
    #: the ``<coprocs>`` block's inner text, kept as the client wrote it
    coprocs_xml: str = ""

    @property
    def has_vm_extensions(self) -> bool:
        """The CPU reports VT-x (``vmx``) or AMD-V (``svm``)."""
        words = self.p_features.lower().split()
        return "vmx" in words or "svm" in words

    @property
    def under_hypervisor(self) -> bool:
        return "hypervisor" in self.p_features.lower().split()


@dataclass(frozen=True)
class ProxyInfo:
    use_http_proxy: bool = False
    use_socks_proxy: bool = False
    use_http_auth: bool = False
    socks_server_name: str = ""
    socks_server_port: int = 80
    http_server_name: str = ""
    http_server_port: int = 80
    socks5_user_name: str = ""
    socks5_user_passwd: str = ""
    socks5_remote_dns: bool = False
    http_user_name: str = ""
    http_user_passwd: str = ""
    no_proxy: str = ""
    no_autodetect: bool = False


@dataclass(frozen=True)
class GlobalPrefs:
    """The global preferences the client passes on; the ones a wrapper uses are typed."""

    source_project: str = ""
    mod_time: float = 0.0
    battery_charge_min_pct: float = 90.0
    battery_max_temperature: float = 40.0
    run_on_batteries: bool = True
    run_if_user_active: bool = True
    run_gpu_if_user_active: bool = False
    suspend_if_no_recent_input: float = 0.0
    suspend_cpu_usage: float = 0.0
    start_hour: float = 0.0
    end_hour: float = 0.0
    net_start_hour: float = 0.0
    net_end_hour: float = 0.0
    leave_apps_in_memory: bool = False
    confirm_before_connecting: bool = True
    hangup_if_dialed: bool = False
    dont_verify_images: bool = False
    work_buf_min_days: float = 0.1
    work_buf_additional_days: float = 0.5
    max_ncpus_pct: float = 100.0
    cpu_scheduling_period_minutes: float = 60.0
    disk_interval: float = 60.0
    disk_max_used_gb: float = 0.0
    disk_max_used_pct: float = 90.0
    disk_min_free_gb: float = 0.1
    vm_max_used_pct: float = 75.0
    ram_max_used_busy_pct: float = 50.0
    ram_max_used_idle_pct: float = 90.0
    idle_time_to_run: float = 3.0
    max_bytes_sec_up: float = 0.0
    max_bytes_sec_down: float = 0.0
    cpu_usage_limit: float = 100.0
    daily_xfer_limit_mb: float = 0.0
    daily_xfer_period_days: int = 0
    override_file_present: bool = False
    network_wifi_only: bool = False
    #: children we do not model (e.g. ``<day_prefs>``), kept verbatim and written last
    extra_xml: str = ""


@dataclass(frozen=True)
class AppInitData:
    """Everything in init_data.xml. Defaults are what the API assumes for a missing element."""

    major_version: int = 0
    minor_version: int = 0
    release: int = 0
    app_version: int = 0
    userid: int = 0
    teamid: int = 0
    hostid: int = 0
    app_name: str = ""
    symstore: str = ""
    acct_mgr_url: str = ""
    project_preferences: str = ""  # raw XML
    team_name: str = ""
    user_name: str = ""
    project_dir: str = ""
    boinc_dir: str = ""
    authenticator: str = ""
    wu_name: str = ""
    result_name: str = ""
    #: the Windows client's segment name (``boinc_N``); it writes this instead of ``shm_key``
    comm_obj_name: str = ""
    shm_key: int = 0
    slot: int = 0
    client_pid: int = 0
    wu_cpu_time: float = 0.0
    starting_elapsed_time: float = 0.0
    using_sandbox: bool = False
    vm_extensions_disabled: bool = False
    user_total_credit: float = 0.0
    user_expavg_credit: float = 0.0
    host_total_credit: float = 0.0
    host_expavg_credit: float = 0.0
    resource_share_fraction: float = 0.0
    checkpoint_period: float = 0.0
    fraction_done_start: float = 0.0
    fraction_done_end: float = 1.0
    gpu_type: str = ""
    gpu_device_num: int = -1
    gpu_opencl_dev_index: int = -1
    gpu_usage: float = 0.0
    ncpus: float = 0.0
    rsc_fpops_est: float = 0.0
    rsc_fpops_bound: float = 0.0
    rsc_memory_bound: float = 0.0
    rsc_disk_bound: float = 0.0
    computation_deadline: float = 0.0
    vbox_window: bool = False
    no_priority_change: bool = False
    process_priority: int = -1
    process_priority_special: int = -1
    host_info: HostInfo = field(default_factory=HostInfo)
    proxy_info: ProxyInfo = field(default_factory=ProxyInfo)
    global_prefs: GlobalPrefs = field(default_factory=GlobalPrefs)
    app_files: tuple[str, ...] = ()

    @property
    def client_version(self) -> tuple[int, int, int]:
        return (self.major_version, self.minor_version, self.release)


# ---------------------------------------------------------------------------------------------
# how each top-level element is written: (name, only when non-empty, escaped)

# Elements written only when non-empty, in 7.20.5 (8.x writes some of them always).
_OPTIONAL_STRINGS = frozenset(
    {
        "app_name",
        "symstore",
        "acct_mgr_url",
        "project_preferences",
        "team_name",
        "user_name",
        "project_dir",
        "boinc_dir",
        "authenticator",
        "wu_name",
        "result_name",
        "comm_obj_name",
    }
)
_ESCAPED_TOP = frozenset({"team_name", "user_name"})
_NESTED = frozenset({"host_info", "proxy_info", "global_prefs", "app_files"})
_TOP_ORDER = tuple(f.name for f in fields(AppInitData) if f.name not in _NESTED)

# Host strings the client escapes; the rest of host_info is raw.
_ESCAPED_HOST = frozenset(
    {
        "p_vendor",
        "p_model",
        "p_features",
        "os_name",
        "os_version",
        "product_name",
        "virtualbox_version",
    }
)
_HOST_OPTIONAL = frozenset({"product_name", "mac_address", "virtualbox_version"})
_PROXY_FLAGS = ("use_http_proxy", "use_socks_proxy", "use_http_auth")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def _line(indent: str, name: str, value: Any, escaped: bool = False) -> str:
    text = _format_value(value)
    if escaped:
        text = xml_escape(text)
    return f"{indent}<{name}>{text}</{name}>\n"


def _format_host_info(host: HostInfo) -> str:
    out = ["<host_info>\n"]
    for f in fields(HostInfo):
        if f.name == "coprocs_xml":
            continue
        value = getattr(host, f.name)
        if f.name in _HOST_OPTIONAL and not value:
            continue
        out.append(_line("    ", f.name, value, f.name in _ESCAPED_HOST))
    out.append(f"    <coprocs>\n{host.coprocs_xml}    </coprocs>\n")
    out.append("</host_info>\n")
    return "".join(out)


def _format_proxy_info(proxy: ProxyInfo) -> str:
    out = ["<proxy_info>\n"]
    out.extend(f"    <{flag}/>\n" for flag in _PROXY_FLAGS if getattr(proxy, flag))
    for f in fields(ProxyInfo):
        if f.name not in _PROXY_FLAGS:
            out.append(_line("    ", f.name, getattr(proxy, f.name)))
    out.append("</proxy_info>\n")
    return "".join(out)


def _format_global_prefs(prefs: GlobalPrefs) -> str:
    out = ["<global_preferences>\n"]
    for f in fields(GlobalPrefs):
        if f.name != "extra_xml":
            out.append(_line("   ", f.name, getattr(prefs, f.name)))
    out.append(prefs.extra_xml)
    out.append("</global_preferences>\n")
    return "".join(out)


def format_init_data(aid: AppInitData) -> str:
    """init_data.xml exactly as the 7.20.5 client writes it (no XML declaration)."""
    out = ["<app_init_data>\n"]
    for name in _TOP_ORDER:
        value = getattr(aid, name)
        if name in _OPTIONAL_STRINGS and not value:
            continue
        if name == "shm_key" and aid.comm_obj_name:
            continue  # the Windows client writes the segment's name instead of a key
        if name == "project_preferences":
            out.append(f"<project_preferences>\n{value}</project_preferences>\n")
            continue
        out.append(_line("", name, value, name in _ESCAPED_TOP))
    out.append(_format_host_info(aid.host_info))
    out.append(_format_proxy_info(aid.proxy_info))
    out.append(_format_global_prefs(aid.global_prefs))
    out.extend(_line("", "app_file", name) for name in aid.app_files)
    out.append("</app_init_data>\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# reading


def _text(elem: Element) -> str:
    return (elem.text or "").strip(" \t\r\n\v\f")  # ASCII only, as C isspace


def _parse_scalar(kind: Any, elem: Element, where: str) -> Any:
    text = _text(elem)
    try:
        if kind == "bool":
            return True if not text else c_int(text) != 0
        if kind == "int":
            return (
                (c_int(text) if _INTEGRAL.fullmatch(text) else int(c_double(text))) if text else 0
            )
        if kind == "float":
            return c_double(text)
    except ValueError as exc:
        raise InitDataError(
            f"{FILE_NAME}: <{where}{elem.tag}> has {text!r}, which is not a number"
        ) from exc
    return _from_byte_escapes(text)


def _inner_xml(elem: Element) -> str:
    """The children of ``elem`` serialised back, for blocks we keep verbatim."""
    import xml.etree.ElementTree as ET  # serialising our own tree is safe

    return "".join(ET.tostring(child, encoding="unicode") for child in elem)


def _parse_fields(cls: type[Any], elem: Element, where: str) -> dict[str, Any]:
    types = {f.name: f.type for f in fields(cls)}
    values: dict[str, Any] = {}
    for child in elem:
        kind = types.get(child.tag)
        if kind is None or child.tag in _NESTED:
            continue
        values[child.tag] = _parse_scalar(kind, child, where)
    return values


def _parse_host_info(elem: Element) -> HostInfo:
    values = _parse_fields(HostInfo, elem, "host_info/")
    coprocs = elem.find("coprocs")
    if coprocs is not None:
        inner = _inner_xml(coprocs)
        values["coprocs_xml"] = "".join(f"        {line}\n" for line in inner.split("\n") if line)
    return HostInfo(**values)


def _parse_global_prefs(elem: Element) -> GlobalPrefs:
    known = {f.name for f in fields(GlobalPrefs)} - {"extra_xml"}
    values = _parse_fields(GlobalPrefs, elem, "global_preferences/")
    extra = [child for child in elem if child.tag not in known]
    if extra:
        import xml.etree.ElementTree as ET

        values["extra_xml"] = "".join(
            "   " + ET.tostring(child, encoding="unicode").strip() + "\n" for child in extra
        )
    return GlobalPrefs(**values)


def parse_init_data(data: str | bytes) -> AppInitData:
    """Parse init_data.xml as the API does: order-free, unknown elements skipped."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = _STRAY_AMPERSAND.sub("&amp;", text)
    try:
        root = DefusedET.fromstring(text)
    except DefusedXmlException as exc:
        raise InitDataError(f"{FILE_NAME}: refused unsafe XML ({exc})") from exc
    except Exception as exc:  # ParseError and expat's ValueErrors
        raise InitDataError(f"{FILE_NAME}: not well-formed XML: {exc}") from exc
    if root.tag != "app_init_data":
        raise InitDataError(f"{FILE_NAME}: root element is <{root.tag}>, expected <app_init_data>")
    values = _parse_fields(AppInitData, root, "")
    prefs = root.find("project_preferences")
    if prefs is not None:
        values["project_preferences"] = _project_prefs_raw(text)
    host = root.find("host_info")
    if host is not None:
        values["host_info"] = _parse_host_info(host)
    proxy = root.find("proxy_info")
    if proxy is not None:
        flags = {flag: proxy.find(flag) is not None for flag in _PROXY_FLAGS}
        values["proxy_info"] = ProxyInfo(
            **{**_parse_fields(ProxyInfo, proxy, "proxy_info/"), **flags}
        )
    gp = root.find("global_preferences")
    if gp is not None:
        values["global_prefs"] = _parse_global_prefs(gp)
    values["app_files"] = tuple(_text(e) for e in root.findall("app_file"))
    return AppInitData(**values)


def _project_prefs_raw(text: str) -> str:
    """Project preferences are opaque to us: keep the bytes between the tags as written."""
    start = text.find("<project_preferences>")
    end = text.find("</project_preferences>", start)
    inner = text[start + len("<project_preferences>") : end]
    return inner[1:] if inner.startswith("\n") else inner
