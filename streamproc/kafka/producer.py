"""The output producer: confluent-kafka with idempotence, whose ``flush`` raises on any loss."""

from __future__ import annotations

import asyncio

from confluent_kafka import KafkaError, Producer

from streamproc.config import Config


class OutputProducer:
    """A confluent-kafka producer whose ``flush`` raises if any record was not delivered."""

    def __init__(self, cfg: Config) -> None:
        self._producer = Producer(
            {
                **cfg.kafka.librdkafka(),
                "linger.ms": 20,
                "compression.type": "lz4",
                "message.max.bytes": 8_388_608,
                # Every record on all in-sync replicas, and a retry neither duplicates nor
                # reorders it (idempotence implies acks=all; said here for the reader).
                "acks": "all",
                "enable.idempotence": True,
            }
        )
        self._failed: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failed.append(err)

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None
    ) -> None:
        """Queue one record (to ``partition`` when given, else by the key's hash)."""
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, on_delivery=self._on_delivery, **extra
                )
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self._producer.poll(0.1)

    async def flush(self) -> None:
        """Wait until every produced record is acknowledged; raise if any failed."""
        if not self._failed and len(self._producer) == 0:
            # Nothing queued, in flight or with an unserved delivery report: skip the thread hop.
            return
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(None, self._producer.flush, 30.0)
        if remaining:
            raise KafkaDeliveryError(f"{remaining} records still undelivered after 30 s")
        if self._failed:
            errors, self._failed = self._failed, []
            raise KafkaDeliveryError(f"{len(errors)} records failed: {errors[0]}")


class KafkaDeliveryError(RuntimeError):
    pass
