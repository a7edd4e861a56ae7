using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;

namespace LoraServing;

/// <summary>
/// A bounded load test on a running server: <c>clients</c> concurrent HTTP clients send up to <c>requests</c> predictions
/// (stopping at <c>limit</c>), each checked against the expected scores (the model's batched <c>Transform</c>).
/// </summary>
public static class LoadTest
{
    /// <summary>One request to send: the model, the text and the scores <c>Transform</c> gave for it.</summary>
    public sealed record Work(string Model, string Text, float[] Expected);

    /// <summary>What a run measured.</summary>
    public sealed record Result(string Label, int Requests, int Failures, int Mismatches, double MaxDifference, double Seconds,
        double RequestsPerSecond, double P50Milliseconds, double P99Milliseconds, long ProcessRssBytes)
    {
        /// <summary>One Markdown table row.</summary>
        public string ToMarkdownRow() => string.Create(CultureInfo.InvariantCulture,
            $"| {Label} | {Requests} | {RequestsPerSecond:F1} | {P50Milliseconds:F1} | {P99Milliseconds:F1} | {ProcessRssBytes / 1048576.0:F0} | {Mismatches + Failures} |");
    }

    /// <summary>Sends the work round-robin until <paramref name="requests"/> are done or <paramref name="limit"/> has passed.</summary>
    /// <param name="baseAddress">The server, e.g. http://127.0.0.1:5123/ (loopback only).</param>
    /// <param name="label">A name for the result row.</param>
    /// <param name="work">What to send; requests cycle through it.</param>
    /// <param name="clients">Concurrent clients.</param>
    /// <param name="requests">Requests in all (the bound).</param>
    /// <param name="limit">Time bound.</param>
    /// <param name="tolerance">Allowed |score − expected| (single-row engine vs batched Transform: padding differs).</param>
    public static async Task<Result> RunAsync(Uri baseAddress, string label, IReadOnlyList<Work> work, int clients, int requests, TimeSpan limit, double tolerance = 1e-4)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(clients, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(requests, 1);
        if (work.Count == 0)
        {
            throw new ArgumentException("No work to send.", nameof(work));
        }

        if (!baseAddress.IsLoopback)
        {
            throw new ArgumentException($"The load test only targets loopback addresses; got {baseAddress}.", nameof(baseAddress));
        }

        using var http = new HttpClient { BaseAddress = baseAddress, Timeout = limit };
        int next = -1, failures = 0, mismatches = 0;
        double maxDifference = 0;
        var latencies = new List<double>(requests);
        var gate = new Lock();
        var deadline = Stopwatch.StartNew();

        async Task Client()
        {
            while (deadline.Elapsed < limit)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= requests)
                {
                    return;
                }

                var item = work[i % work.Count];
                var start = Stopwatch.GetTimestamp();
                try
                {
                    using var response = await http.PostAsJsonAsync($"models/{Uri.EscapeDataString(item.Model)}/predict", new ServingApp.PredictRequest(item.Text)).ConfigureAwait(false);
                    var answer = response.IsSuccessStatusCode ? await response.Content.ReadFromJsonAsync<ServingApp.PredictResponse>().ConfigureAwait(false) : null;
                    double elapsed = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                    double difference = answer is null || answer.Score.Length != item.Expected.Length
                        ? double.PositiveInfinity
                        : answer.Score.Zip(item.Expected, (a, b) => (double)Math.Abs(a - b)).Max();
                    lock (gate)
                    {
                        latencies.Add(elapsed);
                        if (answer is null)
                        {
                            failures++;
                        }
                        else if (!(difference <= tolerance))
                        {
                            mismatches++;
                        }

                        if (answer is not null && double.IsFinite(difference))
                        {
                            maxDifference = Math.Max(maxDifference, difference);
                        }
                    }
                }
                catch (HttpRequestException)
                {
                    Interlocked.Increment(ref failures);
                }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(Client))).ConfigureAwait(false);
        double seconds = deadline.Elapsed.TotalSeconds;
        latencies.Sort();
        double Percentile(double p) => latencies.Count == 0 ? double.NaN : latencies[Math.Min(latencies.Count - 1, (int)Math.Ceiling(p * latencies.Count) - 1)];
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        return new Result(label, latencies.Count, failures, mismatches, maxDifference, seconds, latencies.Count / seconds,
            Percentile(0.5), Percentile(0.99), self.WorkingSet64);
    }
}
