"""A tf.data service cluster for training input: one dispatcher and any number of CPU workers.

A GPU host with few cores can hand the input pipeline (read, augment, batch, encode targets) to CPU
machines: start a dispatcher and workers, then train with `train_ssd.py --data_service HOST:PORT`
(preprocessing/inputs.py from_data_service sends the pipeline to the dispatcher; the workers run it).

    python3 -m engine.data_service dispatcher --port 5050
    python3 -m engine.data_service worker --dispatcher dispatcher-host:5050 --port 5051 \\
        --worker_address this-host:5051
    python3 train_ssd.py --data_service dispatcher-host:5050 ...

Workers read the TFRecords themselves, at the --data_dir path the trainer gives: that path must be
readable on every worker (a shared file system, or the same copy at the same path). Each process
serves until it is killed (Ctrl-C or SIGTERM).
"""

import time

from absl import app, flags, logging

from engine import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 0, "Port to serve on; 0 picks a free one (printed).")
flags.DEFINE_string("dispatcher", "", "worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string("worker_address", "",
                    "worker: HOST:PORT under which trainers reach this worker; default localhost:<port>, "
                    "which only works when trainer and worker share a machine.")

ROLES = ("dispatcher", "worker")


def start_dispatcher(port=0):
    """A started tf.data service dispatcher on `port` (0: any free one); its .target is grpc://host:port."""
    import tensorflow as tf
    return tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=port))


def start_worker(dispatcher_address, port=0, worker_address=""):
    """A started worker serving the dispatcher at `dispatcher_address` (HOST:PORT, grpc:// optional)."""
    import tensorflow as tf
    address = dispatcher_address.split("://", 1)[-1]
    config = tf.data.experimental.service.WorkerConfig(dispatcher_address=address, port=port,
                                                       worker_address=worker_address or None)
    return tf.data.experimental.service.WorkerServer(config)


def address_of(server):
    """HOST:PORT of a started dispatcher (its target without the grpc:// prefix)."""
    return server.target.split("://", 1)[-1]


def main(argv):
    if len(argv) != 2 or argv[1] not in ROLES:
        raise app.UsageError(f"usage: python3 -m engine.data_service {{{'|'.join(ROLES)}}} [flags]")
    if argv[1] == "dispatcher":
        server = start_dispatcher(FLAGS.port)
        logging.info("tf.data service dispatcher at %s; train with --data_service %s", server.target,
                     address_of(server))
    else:
        if not FLAGS.dispatcher:
            raise app.UsageError("worker needs --dispatcher HOST:PORT")
        server = start_worker(FLAGS.dispatcher, FLAGS.port, FLAGS.worker_address)
        # WorkerServer keeps its bound address only in a private field; it names the port picked for 0.
        logging.info("tf.data service worker at %s serving dispatcher %s",
                     getattr(server, "_address", FLAGS.port), FLAGS.dispatcher)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logging.info("stopped")


if __name__ == "__main__":
    cli.run(main, positionals=True)   # the role is a positional argument
