// A small app built on the real BOINC API (Debian libboinc-app-dev), run under the harness by
// tests/system/test_libboinc_interop.py. It works in steps (busy CPU), reports fraction done,
// checkpoints through the API, optionally sends a trickle-up, writes its output through the
// logical name and ends with boinc_finish(status). Everything else (suspend, resume, quit,
// abort, heartbeat, status messages) is the API's own behaviour.
//
//   boinc_test_app [--steps N] [--step-time S] [--trickle] [--finish-status N]

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "boinc_api.h"
#include "filesys.h"
#include "util.h"

static void burn(double seconds) {
    timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    volatile double x = 0;
    do {
        for (int i = 0; i < 100000; i++) x += i * 0.5;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
}

int main(int argc, char** argv) {
    int steps = 20;
    double step_time = 0.1;
    bool trickle = false;
    int finish_status = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--step-time") && i + 1 < argc) step_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--trickle")) trickle = true;
        else if (!strcmp(argv[i], "--finish-status") && i + 1 < argc) finish_status = atoi(argv[++i]);
    }
    int retval = boinc_init();
    if (retval) {
        fprintf(stderr, "boinc_init failed: %d\n", retval);
        exit(retval);
    }
    int step = 0;
    FILE* f = boinc_fopen("cpp_checkpoint.txt", "r");
    if (f) {
        if (fscanf(f, "%d", &step) != 1) step = 0;
        fclose(f);
    }
    fprintf(stderr, "boinc_test_app: start at step %d of %d\n", step, steps);
    for (; step < steps; step++) {
        burn(step_time);
        boinc_fraction_done((step + 1) / (double)steps);
        if (boinc_time_to_checkpoint()) {
            f = boinc_fopen("cpp_checkpoint.txt", "w");
            fprintf(f, "%d\n", step + 1);
            fclose(f);
            boinc_checkpoint_completed();
        }
    }
    char path[512];
    boinc_resolve_filename("out", path, sizeof(path));
    f = boinc_fopen(path, "w");
    if (f) {
        fprintf(f, "boinc_test_app did %d steps\n", steps);
        fclose(f);
    }
    if (trickle) {
        char variety[] = "cpp_progress";
        char body[] = "<value>42</value>\n<text>a &amp; b, &lt;raw&gt;</text>\n";
        boinc_send_trickle_up(variety, body);
        // The API announces the file on its next 1 s tick, but stops ticking once
        // boinc_finish() starts: a trickle sent right before finishing would never be
        // announced. Give the timer a tick or two first.
        boinc_sleep(2.5);
    }
    boinc_finish(finish_status);  // sleeps 2 s so the timer thread sends the final messages
    return 0;
}
