"""What a user of the API does, over real HTTP: the e2e tier's client of the stack."""

import time

import httpx

from fixtures.accounts import Account
from fixtures.stack import Stack


class Client:
    """What a user of the API does, over real HTTP."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.api_url, timeout=30)
        self.comfyui = httpx.Client(base_url=stack.comfyui_url, timeout=10)

    def new_user(self, name: str) -> Account:
        email = f"{name}-{time.monotonic_ns()}@example.com"
        return Account(email, self.stack.create_token(email))

    def upload(self, user: Account, data: bytes, filename: str = "photo.png") -> httpx.Response:
        return self.http.post(
            "/api/v1/restorations",
            files={"file": (filename, data, "application/octet-stream")},
            headers=user.headers,
        )

    def job(self, user: Account, job_id: str) -> dict:
        response = self.http.get(f"/api/v1/restorations/{job_id}", headers=user.headers)
        response.raise_for_status()
        return response.json()

    def wait_for(self, user: Account, job_id: str, *statuses: str, timeout: float = 60) -> dict:
        """Poll until the job reaches one of `statuses`; fail with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(user, job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} did not reach {statuses} in {timeout} s; last state: {job}\n"
                    f"worker log:\n{self.stack.worker.log_tail(30)}"
                )
            time.sleep(0.2)

    def set_fault(self, **fault: object) -> None:
        self.comfyui.post("/_standin/faults", json=fault).raise_for_status()

    def clear_faults(self) -> None:
        self.comfyui.delete("/_standin/faults").raise_for_status()

    def close(self) -> None:
        self.http.close()
        self.comfyui.close()
