"""The scale-out check of scripts/compose_test.sh: over one round_robin channel to every address a name resolves
to, ask GetModelInfo until `--replicas` distinct servers have answered, then translate once. Prints each
server_instance ("hostname:pid") on its own line, then the translation; exits 1 if too few replicas answered."""
from __future__ import annotations

import argparse
import sys
import time

from seq2seq_client import TranslatorClient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="dns:///server:50051")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50, help="GetModelInfo calls at most, 0.1 s apart")
    parser.add_argument("text", nargs="?", default="Un homme fait du vélo dans la rue.")
    args = parser.parse_args(argv)
    instances: set[str] = set()
    with TranslatorClient(args.server, load_balancing="round_robin") as client:
        # round_robin uses the replicas that are connected; the first calls may all go to the first one that is
        for _ in range(args.calls):
            instances.add(client.model_info().server_instance)
            if len(instances) >= args.replicas:
                break
            time.sleep(0.1)
        translation = client.translate([args.text]).results[0].text
    print(*sorted(instances), translation, sep="\n")
    if len(instances) < args.replicas:
        print(f"only {len(instances)} of {args.replicas} replicas answered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
