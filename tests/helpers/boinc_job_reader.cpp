// Reads vbox_job.xml files with Debian's libboinc XML_PARSER, calling it the way vboxwrapper's
// job parser does (docs/compatibility.md#job-file), and prints what was read as JSON.
//
// Input: one file path per line on stdin. Output: one JSON object per line, in order:
//   {"started": bool, "ended": bool, "values": {name: value, ...}, "port_forwards": [...]}
// Only elements the parser took are in "values" (the rest keep vboxwrapper's defaults);
// repeated elements are lists. Strings are hex (they are bytes); doubles are %.17g, or
// "nan" / "inf" / "-inf". Built at test time by tests/unit/test_boinc_parser.py.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "miofile.h"
#include "parse.h"

namespace {

const char* kBools[] = {
    "enable_cern_dataformat", "enable_network", "network_bridged_mode",
    "enable_nat_dns_host_resolver", "enable_shared_directory", "enable_scratch_directory",
    "share_slot_dir", "share_project_dir", "enable_floppyio", "enable_cache_disk",
    "enable_isocontextualization", "enable_remotedesktop", "enable_screenshots_on_error",
    "enable_graphics_support", "enable_vm_savestate_usage", "disable_automatic_checkpoints",
    "boot_iso", "copy_cmdline_to_shared"};
const char* kDoubles[] = {"vram_size_mb", "memory_size_mb", "job_duration",
                          "minimum_checkpoint_interval", "minimum_heartbeat_interval"};
const char* kInts[] = {"pf_guest_port", "pf_host_port"};
const char* kStrings[] = {
    "vm_disk_controller_type", "vm_disk_controller_model", "os_name", "fraction_done_filename",
    "heartbeat_filename", "completion_trigger_file", "temporary_exit_trigger_file",
    "multiattach_vdi_file", "vm_network_driver"};
const char* kRepeated[] = {"copy_to_shared", "trickle_trigger_file", "intermediate_upload_file"};

std::string hex(const std::string& s) {
    static const char* digits = "0123456789abcdef";
    std::string out = "\"";
    for (unsigned char c : s) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out + "\"";
}

std::string number(double x) {
    if (std::isnan(x)) return "\"nan\"";
    if (std::isinf(x)) return x > 0 ? "\"inf\"" : "\"-inf\"";
    char buf[64];
    snprintf(buf, sizeof(buf), "%.17g", x);
    return buf;
}

// Tries every element for the current tag; returns true if one of them took a value.
bool take_element(XML_PARSER& xp, std::map<std::string, std::string>& values,
                  std::map<std::string, std::vector<std::string>>& lists) {
    for (const char* name : kStrings) {
        std::string s;
        if (xp.parse_string(name, s)) { values[name] = hex(s); return true; }
    }
    for (const char* name : kDoubles) {
        double x;
        if (xp.parse_double(name, x)) {
            if (!strcmp(name, "vram_size_mb")) {  // vboxwrapper clamps it when it reads it
                if (x < 16.0) x = 16.0; else if (x > 128.0) x = 128.0;
            }
            values[name] = number(x);
            return true;
        }
    }
    for (const char* name : kBools) {
        bool b;
        if (xp.parse_bool(name, b)) { values[name] = b ? "true" : "false"; return true; }
    }
    for (const char* name : kInts) {
        int i;
        if (xp.parse_int(name, i)) { values[name] = std::to_string(i); return true; }
    }
    for (const char* name : kRepeated) {
        std::string s;
        if (xp.parse_string(name, s)) { lists[name].push_back(hex(s)); return true; }
    }
    return false;
}

std::string port_forward(XML_PARSER& xp) {
    int host = 0, guest = 0, nports = 0;
    bool remote = false;
    while (!xp.get_tag()) {
        if (xp.match_tag("/port_forward")) break;
        if (xp.parse_bool("is_remote", remote)) continue;
        if (xp.parse_int("host_port", host)) continue;
        if (xp.parse_int("guest_port", guest)) continue;
        if (xp.parse_int("nports", nports)) continue;
    }
    return "{\"host_port\": " + std::to_string(host) + ", \"guest_port\": " +
           std::to_string(guest) + ", \"nports\": " + std::to_string(nports) +
           ", \"is_remote\": " + (remote ? "true" : "false") + "}";
}

std::string read_job(const std::string& path) {
    FILE* f = fopen(path.c_str(), "r");
    if (!f) return "{\"error\": \"cannot open\"}";
    MIOFILE mf;
    mf.init_file(f);
    XML_PARSER xp(&mf);
    std::map<std::string, std::string> values;
    std::map<std::string, std::vector<std::string>> lists;
    std::vector<std::string> forwards;
    bool started = xp.parse_start("vbox_job"), ended = false;
    while (started && !xp.get_tag()) {
        if (!xp.is_tag) continue;
        if (xp.match_tag("/vbox_job")) { ended = true; break; }
        if (take_element(xp, values, lists)) continue;
        if (xp.match_tag("port_forward")) forwards.push_back(port_forward(xp));
    }
    fclose(f);
    std::string out = std::string("{\"started\": ") + (started ? "true" : "false") +
                      ", \"ended\": " + (ended ? "true" : "false") + ", \"values\": {";
    bool first = true;
    for (auto& kv : values) {
        out += (first ? "\"" : ", \"") + kv.first + "\": " + kv.second;
        first = false;
    }
    for (auto& kv : lists) {
        out += (first ? "\"" : ", \"") + kv.first + "\": [";
        for (size_t i = 0; i < kv.second.size(); ++i) out += (i ? ", " : "") + kv.second[i];
        out += "]";
        first = false;
    }
    out += "}, \"port_forwards\": [";
    for (size_t i = 0; i < forwards.size(); ++i) out += (i ? ", " : "") + forwards[i];
    return out + "]}";
}

}  // namespace

int main() {
    std::string path;
    while (std::getline(std::cin, path)) {
        std::cout << read_job(path) << std::endl;
    }
    return 0;
}
