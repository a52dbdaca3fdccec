#!/usr/bin/env bash
# The order in which the committed lever map (docs/race/store.sqlite) was run, one
# `mvsim experiment race` call per item so that the store holds what finished whatever
# the time allowed: first every lever's missing side of the demo (a value below and one
# above, where the lever has one), then the tolerance checks at the cheap ends, then
# third values, cheapest first (T is the budget rule's cap), then the remaining checks.
# Each call resumes from the store; STOP_AT (a `date` time, e.g. 16:05) stops starting new
# items after it. Run from the repository root: nohup nice -n 19 docs/race/run_map.sh &
set -u
STORE=${STORE:-docs/race/store.sqlite}
STOP_AT=${STOP_AT:-}
side=(d=100 multi_per_class=120 sigma_0=0.02 sigma_p=0.0035355339059327377
      "own_z=(0.5,0.5)" "own_z=(2.0,2.0)" sigma_n=0.04242640687119285)
checks_cheap=(q=3 d=800 m=8 multi_per_class=15 sigma_0=0.05 "noisy_z_multi=(0.4,0.6)"
              varrho=0.25 sigma_p=0.0282842712474619 sigma_n=0.1697056274847714)
third=(single_per_view=16 multi_per_class=240 varrho=4.0 "noisy_z_multi=(0.05,0.1)"
       sigma_p=0.0 m=2 sigma_0=0.012 m=1 sigma_n=0.021213203435596423 sigma_0=0.008
       sigma_0=0.004 q=6 q=8)
run() {  # $1: --no-checks or empty; $2: the lever item
  if [[ -n $STOP_AT && $(date +%s) -ge $(date -d "$STOP_AT" +%s) ]]; then
    echo "run_map: past $STOP_AT, not starting $2"; return 1
  fi
  echo "run_map: $(date -u +%H:%M:%S) $2 $1"
  mvsim experiment race --store "$STORE" --levers "$2" $1 --no-progress > /dev/null
}
for it in "${side[@]}"; do run --no-checks "$it" || exit 0; done
for it in "${checks_cheap[@]}"; do run "" "$it" || exit 0; done
for it in "${third[@]}"; do run --no-checks "$it" || exit 0; done
for it in "${side[@]}" "${third[@]}"; do run "" "$it" || exit 0; done
