"""The Redis broker transport (kombu's), changed so that losing Redis does not kill the Celery worker.

When Redis goes away, Celery closes the consumer's channel and later connects a new one. kombu's Redis
transport then still tries to use the closed channel: to put its unacknowledged messages back on the
queue as it closes, and to acknowledge them when their tasks end. Both raise (an AttributeError from the
closed connection, or a ConnectionError while Redis is down), Celery calls that an unrecoverable error
and the worker exits, so nothing is triaged once Redis is back (tests/faults/test_redis_restart.py).
Those messages belong to a connection that no longer exists: they are left alone. Nothing is lost:
PostgreSQL has the work, and the sweeps send again whatever it was waiting for.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def _connection_gone(self) -> bool:
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client: Any = None) -> None:
        try:
            if not self._connection_gone():
                super().restore_unacked(client)
                return
        except redis.RedisError:
            pass
        logger.warning("broker connection lost: %d unacknowledged messages left", len(self._delivered or {}))

    def ack(self, delivery_tag: str) -> None:
        if self._connection_gone():
            logger.info("broker connection lost: message %s not acknowledged", delivery_tag)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._connection_gone():
            logger.info("broker connection lost: message %s not rejected", delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
