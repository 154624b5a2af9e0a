"""settings: defaults, shorthands, file + flag precedence, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from nodeagent import settings
from nodeagent.settings import ConfigError, Settings


def test_defaults_use_the_project_ports():
    s = settings.load({})
    assert s.listen.port == 14789 and s.status.port == 9477
    assert s.outputs.pcap.dir is None and s.outputs.sensors == ()
    assert s.dedup.enabled and s.normalize.max_frame == 1514
    assert s.outputs.pcap.snaplen == 262144


def test_shorthand_strings_parse_like_the_flags():
    s = settings.load(
        {
            "listen": "127.0.0.1:5000",
            "status": "[::1]:8080",
            "senders": ["10.1.2.3,auto,default/web", "10.0.0.6,0x10,ns/db"],
            "peers": ["10.9.0.1,other/api"],
            "outputs": {"sensors": ["192.0.2.1", "[2001:db8::1]:4790"]},
        }
    )
    assert (s.listen.host, s.listen.port) == ("127.0.0.1", 5000)
    assert (s.status.host, s.status.port) == ("::1", 8080)
    assert s.senders[0].vni == 0x010203  # auto: low 24 bits of the IPv4 address
    assert s.senders[1].vni == 16 and (s.senders[1].namespace, s.senders[1].name) == ("ns", "db")
    assert s.peers[0].ip == "10.9.0.1" and s.peers[0].name == "api"
    assert [(x.host, x.port) for x in s.outputs.sensors] == [("192.0.2.1", 4789), ("2001:db8::1", 4790)]


def test_mapping_forms_and_sensor_vni():
    s = settings.load(
        {
            "senders": [{"ip": "fd00::0005", "vni": 7, "namespace": "a", "name": "b"}],
            "outputs": {"sensors": [{"host": "192.0.2.1", "vni": "0xff"}]},
        }
    )
    assert s.senders[0].ip == "fd00::5"  # canonical, as the socket reports it
    assert s.outputs.sensors[0].vni == 255


def test_file_then_flags(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "listen: {host: 127.0.0.1, port: 5000, rcvbuf: 1048576}\n"
        "outputs:\n  pcap: {dir: /tmp/x, max_bytes: 1000, max_total_bytes: 5000}\n"
    )
    s = settings.load_file(str(path), {"listen": {"port": 6000}, "outputs": {"pcap": {"dir": "/tmp/y"}}})
    assert (s.listen.host, s.listen.port, s.listen.rcvbuf) == ("127.0.0.1", 6000, 1048576)
    assert s.outputs.pcap.dir == "/tmp/y" and s.outputs.pcap.max_bytes == 1000


def test_json_file_is_accepted(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"senders": ["10.0.0.5,5,default/web"]}))
    assert settings.load_file(str(path)).senders[0].vni == 5


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert settings.load_file(str(path)) == Settings()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"outputs": {"pcap": {"max_bytes": 0}}}, "outputs.pcap.max_bytes must be > 0"),
        ({"outputs": {"pcap": {"precision": "ms"}}}, "outputs.pcap.precision must be ns or us"),
        ({"outputs": {"pcap": {"max_bytes": "big"}}}, "outputs.pcap.max_bytes must be an integer"),
        ({"outputs": {"sensors": [{"host": "sensor.example"}]}}, "outputs.sensors[0].host must be an IP"),
        ({"outputs": {"sensors": [{"host": "192.0.2.1", "port": 0}]}}, "outputs.sensors[0].port must be in"),
        ({"senders": ["10.0.0.5,5"]}, "senders[0] must be IP[+IP...],VNI,NAMESPACE/NAME"),
        ({"senders": ["10.0.0.5,5,noslash"]}, "senders[0] must be NAMESPACE/NAME"),
        ({"senders": ["10.0.0.5,99999999,a/b"]}, "senders[0].vni must be in 0..16777215"),
        ({"senders": ["10.0.0.5,five,a/b"]}, "senders[0].vni must be an integer, 0x.. or auto"),
        ({"senders": ["fd00::1,auto,a/b"]}, "senders[0].vni auto needs an IPv4"),
        ({"senders": [{"ip": "10.0.0.5", "namespace": "a", "name": "b"}]}, "senders[0].vni is required"),
        ({"senders": ["10.0.0.5,1,a/b"], "peers": ["10.0.0.5,c/d"]}, "peers[0].ip 10.0.0.5 is listed twice"),
        ({"listen": {"host": "localhost"}}, "listen.host must be an IP address"),
        ({"listen": "127.0.0.1:99999"}, "listen port must be in 0..65535"),
        ({"listen": {"rcvbuf": 10}}, "listen.rcvbuf must be >= 65536"),
        ({"listen": [1]}, "listen must be a mapping"),
        ({"status": {"colour": "red"}}, "status.colour is not a known field"),
        ({"nonsense": 1}, "nonsense is not a known field"),
        ({"normalize": {"max_frame": 10}}, "normalize.max_frame must be in"),
        ({"normalize": {"segment": "yes"}}, "normalize.segment must be true or false"),
        ({"dedup": {"vantage": "middle"}}, "dedup.vantage must be client or server"),
        ({"log": {"level": "LOUD"}}, "log.level must be a log level"),
    ],
)
def test_bad_values_name_their_field(data, message):
    with pytest.raises(ConfigError) as info:
        settings.load(data)
    assert str(info.value).startswith(message)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="--config cannot be read"):
        settings.load_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="--config is not valid YAML"):
        settings.load_file(str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="--config must hold a mapping"):
        settings.load_file(str(scalar))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:80", ("::1", 80)),
        ("::1", ("::1", 9)),
        ("10.0.0.1", ("10.0.0.1", 9)),
    ],
)
def test_parse_hostport(text, expected):
    assert settings.parse_hostport(text, 9, "x") == expected


def test_parse_hostport_without_default_needs_a_port():
    with pytest.raises(ConfigError, match="--listen must be IP:PORT"):
        settings.parse_hostport("10.0.0.1", None, "--listen")


def test_merge_replaces_lists_and_merges_mappings():
    merged = settings.merge({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"c": 3}, "l": [9]})
    assert merged == {"a": {"b": 1, "c": 3}, "l": [9]}


def test_groups_are_frozen():
    s = settings.load({})
    with pytest.raises(AttributeError):
        s.listen.port = 1  # type: ignore[misc]


def test_a_pod_is_declared_with_all_its_addresses():
    s = settings.load({"senders": ["10.0.1.2+FD00:1::2,auto,default/web"],
              "peers": ["10.0.2.2+fd00:2::2,default/db,5432"]})
    assert (s.senders[0].ip, s.senders[0].ips, s.senders[0].vni) == ("10.0.1.2", ("fd00:1::2",), 258)
    assert (s.peers[0].ip, s.peers[0].ips, s.peers[0].ports) == ("10.0.2.2", ("fd00:2::2",), (5432,))
    mapping = {"ip": "10.0.1.2", "ips": ["fd00:1::2"], "vni": 258, "namespace": "default", "name": "web"}
    assert settings.load({"senders": [mapping]}).senders == s.senders
    # The VNI "auto" comes from the IPv4 address wherever it is listed.
    assert settings.load({"senders": ["fd00:1::2+10.0.1.2,auto,default/web"]}).senders[0].vni == 258


@pytest.mark.parametrize(
    "data,message",
    [
        ({"senders": ["10.0.1.2+nope,258,a/b"]}, "senders[0].ips[0] must be an IP address"),
        ({"senders": ["10.0.1.2+10.0.1.2,258,a/b"]}, "senders[0].ips[0] 10.0.1.2 is listed twice"),
        ({"senders": ["fd00::1,auto,a/b"]}, "senders[0].vni auto needs an IPv4 pod address"),
        ({"senders": ["10.0.1.2+fd00::2,258,a/b"], "peers": ["fd00::2,c/d"]},
         "peers[0].ip fd00::2 is listed twice"),
        ({"dedup": {"service_cidrs": ["10.96.0.0/33"]}}, "dedup.service_cidrs[0] must be a CIDR"),
        ({"dedup": {"hold": 0}}, "dedup.hold must be in (0, 1] seconds"),
    ],
)
def test_bad_addresses_and_dedup_values_name_their_field(data, message):
    with pytest.raises(ConfigError) as info:
        settings.load(data)
    assert str(info.value).startswith(message)
