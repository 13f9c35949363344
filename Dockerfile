# The image the compose file builds for workers and Flower.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 BOT_STATE_DIR=/var/lib/bot
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY config ./config
COPY tasks ./tasks
RUN pip install --no-cache-dir . \
 && useradd --system --home /var/lib/bot bot \
 && install -d -o bot -g bot -m 0700 /var/lib/bot
USER bot
CMD ["celery", "-A", "bot", "worker", "--autoscale=4,1", "-l", "info"]
