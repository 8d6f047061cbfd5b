#!/usr/bin/env python3
"""Parses what Spout produced with --envelope cloudevents through the `cloudevents` SDK (2.2.0)
and prints what the SDK made of each message, for Tests/SpoutIntegrationTests/CloudEventsTests.

input (the file named as the argument, else stdin): {"mode": MODE, "messages": [...]}, bytes as base64:
  structured  each message a stdout line (text): cloudevents.core.formats.json
  kafka       {"headers": {name: b64}, "key": b64|null, "value": b64}: bindings.kafka.from_binary
  redis       {"fields": {name: b64}}: the fields as Kafka headers, `payload` as the value
  nats        {"headers": {name: text}, "data": b64}: the ce-* headers (percent-encoded, as in
              the HTTP binding), then bindings.http.from_binary
  rabbitmq    {"headers": {name: text}, "content_type": text, "body": b64}: bindings.rabbitmq.from_binary
stdout: a JSON array, one object per message: the event's attributes (time in ISO 8601) and
`data` (JSON data as is, text as {"text": …}, bytes as {"base64": …}).
A message the SDK refuses ends the script with status 1 and the SDK's error.
"""
import base64
import json
import sys

from cloudevents.core.bindings import http, kafka, rabbitmq
from cloudevents.core.formats.json import JSONFormat



def parse(mode, message):
    fmt = JSONFormat()
    if mode == "structured":
        return fmt.read(None, message.encode("utf-8"))
    if mode == "kafka":
        headers = {name: base64.b64decode(value) for name, value in message["headers"].items()}
        key = base64.b64decode(message["key"]) if message.get("key") is not None else None
        return kafka.from_binary(kafka.KafkaMessage(headers=headers, key=key, value=base64.b64decode(message["value"])), fmt)
    if mode == "redis":
        fields = {name: base64.b64decode(value) for name, value in message["fields"].items()}
        value = fields.pop("payload")
        return kafka.from_binary(kafka.KafkaMessage(headers=fields, key=None, value=value), fmt)
    if mode == "nats":
        # The NATS binding's headers are the HTTP binding's: ce-datacontenttype is an attribute
        # like any other (Content-Type would mean structured mode), values percent-encoded.
        headers = {name: value for name, value in message["headers"].items() if name.lower().startswith("ce-")}
        return http.from_binary(http.HTTPMessage(headers=headers, body=base64.b64decode(message["data"])), fmt)
    if mode == "rabbitmq":
        message = rabbitmq.RabbitMQMessage(headers=message["headers"], content_type=message["content_type"],
                                           body=base64.b64decode(message["body"]))
        return rabbitmq.from_binary(message, fmt)
    raise ValueError("unknown mode " + mode)


def describe(event):
    attributes = dict(event.get_attributes())
    if attributes.get("time") is not None:
        attributes["time"] = attributes["time"].isoformat()
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        data = {"base64": base64.b64encode(data).decode("ascii")}
    elif isinstance(data, str) and not (attributes.get("datacontenttype") or "").startswith("application/json"):
        data = {"text": data}
    attributes["data"] = data
    return attributes


def main():
    if len(sys.argv) > 1:
        with open(sys.argv[1], encoding="utf-8") as source:
            request = json.load(source)
    else:
        request = json.load(sys.stdin)
    results = []
    for index, message in enumerate(request["messages"]):
        try:
            results.append(describe(parse(request["mode"], message)))
        except Exception as error:  # the SDK's validation errors have no common base worth naming
            print(f"message {index} refused by the cloudevents SDK: {type(error).__name__}: {error}", file=sys.stderr)
            sys.exit(1)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
