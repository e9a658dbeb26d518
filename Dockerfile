FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY models ./models
RUN pip install --no-cache-dir .
ENV MAILPULSE_DATA_DIR=/data MAILPULSE_METRICS_PORT=9108 MAILPULSE_METRICS_HOST=0.0.0.0
VOLUME /data
EXPOSE 9108
ENTRYPOINT ["mailpulse"]
CMD ["run"]
